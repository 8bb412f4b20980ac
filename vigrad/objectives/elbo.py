"""The evidence lower bound ``ELBO = E_q[log p(x, z) - log q(z)]``.

With ``K`` particles the estimate is ``(1/K) sum_k log w_k``. The objective is linear in the log
weights, so each score-function site's learning signal is its Rao-Blackwellised downstream cost in
its own particle, divided by ``K``; those signals are independent across particles, which makes the
leave-one-out baseline valid.
"""

from __future__ import annotations

import jax.numpy as jnp

from vigrad.objectives.base import Objective
from vigrad.objectives.particles import Particles
from vigrad.objectives.surrogate import Estimate


class ELBO(Objective):
    """The ELBO with per-site gradient estimators; a drop-in loss for ``numpyro.infer.SVI``.

    Example::

        loss = vigrad.ELBO(num_particles=8, estimators={"z": vigrad.PathGradient()})
        svi = numpyro.infer.SVI(model, guide, optax.adam(1e-2), loss)
    """

    linear_in_log_weights = True

    def program(self, particles: Particles) -> Estimate:
        k = particles.log_w.shape[0]
        value = jnp.mean(particles.log_w)
        signals = {site: cost / k for site, cost in particles.costs.items()}
        return Estimate(value, value, signals, independent_signals=True)
