"""Errors raised by vigrad, each naming the site and the fix."""


class VigradError(Exception):
    """Base class of vigrad's errors."""


class EstimatorError(VigradError, ValueError):
    """An estimator cannot serve a site, or an estimator assignment is malformed."""


class ModelGuideMismatchError(VigradError, ValueError):
    """The guide does not cover the model's latent sites, or their shapes differ."""


class DataError(VigradError, ValueError):
    """Observed data contains NaN or infinite values."""


class CheckpointError(VigradError, ValueError):
    """A checkpoint cannot be read (not vigrad's format, truncated, corrupt) or belongs to a
    different run (other parameters, objective, optimiser, kernel, key or step count)."""
