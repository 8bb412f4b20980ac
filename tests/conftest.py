import jax

# Exactness is asserted in float64 throughout the suite.
jax.config.update("jax_enable_x64", True)
