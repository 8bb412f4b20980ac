"""vigrad: unbiased per-site gradient estimators for variational inference on NumPyro models."""
