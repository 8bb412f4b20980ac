"""The evidence lower bound ``ELBO = E_q[log p(x, z) - log q(z)]``.

With ``K`` particles the estimate is ``(1/K) sum_k log w_k``, a program linear in the log weights:
each score-function site's learning signal is its Rao-Blackwellised downstream cost in its own
particle divided by ``K`` (so leave-one-out baselines are valid), sticking-the-landing sites are
unbiased, and enumerated sites are summed out of each particle's log weight.
"""

from __future__ import annotations

import jax.numpy as jnp

from vigrad.objectives.base import Objective
from vigrad.objectives.context import ProgramContext


class ELBO(Objective):
    """The ELBO with per-site gradient estimators; a drop-in loss for ``numpyro.infer.SVI``.

    Example::

        loss = vigrad.ELBO(num_particles=8, estimators={"z": vigrad.PathGradient()})
        svi = numpyro.infer.SVI(model, guide, optax.adam(1e-2), loss)
    """

    # Read by estimator selection: enumeration candidates apply to objectives linear in log w.
    linear_in_log_weights = True

    def program(self, p: ProgramContext):
        return jnp.mean(p.particles(self.num_particles).log_w)
