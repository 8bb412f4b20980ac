import os

import jax
import pytest

# Exactness is asserted in float64 throughout the suite.
jax.config.update("jax_enable_x64", True)

# The suite compiles hundreds of small programs that then run for well under a second each, so
# XLA's backend (LLVM) optimisation costs more than it saves: skipping it cuts the suite's CPU time
# by about a third. The HLO passes still run, so values agree to rounding, not bit for bit: tests
# marked `optimised` compile with full optimisation. Set JAX_DISABLE_MOST_OPTIMIZATIONS=0 to test
# fully optimised code throughout; the variable also reaches the suite's subprocesses.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
UNOPTIMISED = os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"].lower() in ("1", "true", "yes", "on")
jax.config.update("jax_disable_most_optimizations", UNOPTIMISED)


@pytest.fixture(autouse=True)
def _full_optimisation_where_marked(request):
    if request.node.get_closest_marker("optimised") is None:
        yield
        return
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", UNOPTIMISED)
