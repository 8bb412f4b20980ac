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

# For the same reason the suite compiles with XLA:CPU's older fusion emitters, which generate
# slower kernels (a logistic-regression fit step 1.3x slower) but compile faster (a fit's chunk
# 1.6x faster): this cuts the suite's CPU time by about a third.
# The values agree (the bit-identical tests pass either way). Set XLA_FLAGS to include
# --xla_cpu_use_fusion_emitters=true to test with the newer emitters; the suite's subprocesses
# inherit the choice.
if "xla_cpu_use_fusion_emitters" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_cpu_use_fusion_emitters=false"
    ).strip()


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
