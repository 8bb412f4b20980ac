"""The evidence lower bound ``ELBO = E_q[log p(x, z) - log q(z)]``.

With ``K`` particles the estimate is ``(1/K) sum_k log w_k``, a program linear in the log weights:
each score-function site's learning signal is its Rao-Blackwellised downstream cost in its own
particle divided by ``K`` (so leave-one-out baselines are valid), sticking-the-landing sites are
unbiased, and enumerated sites are summed out of each particle's log weight.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vigrad.errors import EstimatorError
from vigrad.estimators.assignment import EstimatorSpec
from vigrad.objectives.base import STATE_SITE, Objective
from vigrad.objectives.context import ProgramContext


class ELBO(Objective):
    """The ELBO with per-site gradient estimators; a drop-in loss for ``numpyro.infer.SVI``.

    Args:
        num_particles: ``K``.
        estimators: per-site estimators (see :class:`vigrad.Objective`).
        analytic_kl: use ``-KL(q || p)`` in closed form for each latent site where it is known
            (as NumPyro's ``TraceMeanField_ELBO``) instead of ``log p(z) - log q(z)`` at the draw:
            lower variance for mean-field guides. The prior's parents must be drawn before the
            site in the guide (checked).
        sum_sites: with ``False``, :meth:`loss` returns the loss per site (a dict whose values sum
            to the loss, ``-(1/K) sum_k (log p_site - log q_site)``), as NumPyro's
            ``Trace_ELBO(sum_sites=False)`` does, to see which sites drive the objective.
        multi_sample_guide: the guide returns ``S`` samples of every latent site along a leading
            axis, as for NumPyro's ``Trace_ELBO(multi_sample_guide=True)``: each particle's log
            weight is ``sum_s log p(x, z_s) - log q(z_1, ..., z_S)``, the model scored on each
            sample (see :mod:`vigrad.objectives.multi_sample`).

    Example::

        loss = vigrad.ELBO(num_particles=8, estimators={"z": vigrad.PathGradient()})
        svi = numpyro.infer.SVI(model, guide, optax.adam(1e-2), loss)
    """

    # Read by estimator selection: enumeration candidates apply to objectives linear in log w.
    linear_in_log_weights = True

    def __init__(
        self,
        num_particles: int = 1,
        estimators: EstimatorSpec = None,
        analytic_kl: bool = False,
        sum_sites: bool = True,
        multi_sample_guide: bool = False,
    ):
        super().__init__(num_particles, estimators)
        self.analytic_kl = bool(analytic_kl)
        self.sum_sites = bool(sum_sites)
        self.multi_sample_guide = bool(multi_sample_guide)

    def program(self, p: ProgramContext):
        return jnp.mean(p.particles(self.num_particles, analytic_kl=self.analytic_kl).log_w)

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, *args, **kwargs) -> dict:
        out = super().loss_with_mutable_state(rng_key, param_map, model, guide, *args, **kwargs)
        if not self.sum_sites:
            params = {k: v for k, v in param_map.items() if k != STATE_SITE}
            out["loss"] = self.site_losses(rng_key, params, model, guide, args, kwargs)
        return out

    def site_losses(self, rng_key, params, model, guide, args, kwargs) -> dict[str, jax.Array]:
        """Per site, ``-(1/K) sum_k (log p_site - log q_site)`` on the particles the loss draws."""
        run = self._run(params, model, guide, args, kwargs)
        particles = ProgramContext(run, rng_key).particles(
            self.num_particles, analytic_kl=self.analytic_kl
        )
        if particles.sites.enumerated:
            raise EstimatorError(
                f"ELBO(sum_sites=False) with Enumerate() on {sorted(particles.sites.enumerated)}: "
                "the sum over an enumerated site's values is not a sum over sites. Use "
                "sum_sites=True, or vigrad.Score() / vigrad.MVD() for these sites."
            )
        return {n: -jnp.mean(v) for n, v in particles.site_log_w.items()}
