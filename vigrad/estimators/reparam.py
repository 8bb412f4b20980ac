"""Reparameterisation (pathwise) gradients.

For ``z = T_phi(eps)`` with ``eps ~ r`` independent of ``phi``, the gradient of ``E_q[f(z, phi)]`` is
``E_r[grad_phi f(T_phi(eps), phi)]`` (Kingma & Welling 2014; Rezende et al. 2014). NumPyro's
samplers are already reparameterised for every distribution with ``has_rsample``, so this estimator
keeps the value and the full ``log q`` with all their gradient paths. A transformed distribution
(a flow, as in NumPyro's ``AutoIAFNormal`` and ``AutoBNAFNormal``) is sampled with its
intermediates, so ``log q`` is evaluated from them without inverting the flow, as NumPyro does.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from numpyro.distributions import TransformedDistribution

from vigrad.estimators.base import Draw, Estimator, require_rsample


@dataclasses.dataclass(frozen=True)
class Reparam(Estimator):
    """Reparameterisation gradient: ``grad_phi f(T_phi(eps))``. Needs ``has_rsample``."""

    def check(self, site_name: str, fn: Any) -> None:
        require_rsample(self, site_name, fn)

    def sample(self, fn: Any, rng_key: jax.Array, sample_shape: tuple[int, ...]) -> jax.Array:
        return fn.rsample(rng_key, sample_shape)

    def draw(self, fn: Any, rng_key: jax.Array, sample_shape: tuple[int, ...]) -> Draw:
        if isinstance(fn, TransformedDistribution):
            value, intermediates = fn.sample_with_intermediates(rng_key, sample_shape)
            return Draw(value, log_q=fn.log_prob(value, intermediates))
        return Draw(self.sample(fn, rng_key, sample_shape))
