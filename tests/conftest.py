import os

import jax

# Exactness is asserted in float64 throughout the suite.
jax.config.update("jax_enable_x64", True)

# The suite compiles hundreds of small programs that then run for well under a second each, so
# XLA's backend (LLVM) optimisation costs more than it saves: skipping it cuts the suite's CPU time
# by about a third. The HLO passes still run, so programs compute the same values. Set
# JAX_DISABLE_MOST_OPTIMIZATIONS=0 to test fully optimised code; the environment variable also
# reaches the commands the suite runs in subprocesses.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
jax.config.update(
    "jax_disable_most_optimizations",
    os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"].lower() in ("1", "true", "yes", "on"),
)
