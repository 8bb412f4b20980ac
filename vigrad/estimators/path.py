"""Path gradients: "sticking the landing" (Roeder, Wu & Duvenaud, NeurIPS 2017).

The sample is reparameterised as for :class:`~vigrad.Reparam`, but ``log q`` is evaluated with the
guide's parameters stopped, ``log q_{stop(phi)}(T_phi(eps))``: the value keeps its path, the
parameters do not. The dropped term ``grad_phi log q_phi(z)`` at fixed ``z`` has zero expectation, so
the estimator stays unbiased for the ELBO, and its variance vanishes when ``q`` equals the posterior.
Only the parameters are stopped; stopping the whole ``log q`` would drop its dependence on ``z`` and
give a wrong gradient.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from vigrad.estimators.base import Draw, Estimator, require_rsample


def stop_parameters(fn: Any) -> Any:
    """The same distribution with every parameter wrapped in ``stop_gradient``.

    NumPyro distributions are pytrees, so the parameters are its array leaves; transforms (as in
    autoguides' ``TransformedDistribution``) are stopped too, which is right for path gradients.
    """
    return jax.tree.map(jax.lax.stop_gradient, fn)


@dataclasses.dataclass(frozen=True)
class PathGradient(Estimator):
    """Sticking-the-landing path gradient: ``log q`` with stopped parameters at a pathwise sample."""

    def check(self, site_name: str, fn: Any) -> None:
        require_rsample(self, site_name, fn)

    def sample(self, fn: Any, rng_key: jax.Array, sample_shape: tuple[int, ...]) -> jax.Array:
        return fn.rsample(rng_key, sample_shape)

    def draw(self, fn: Any, rng_key: jax.Array, sample_shape: tuple[int, ...]) -> Draw:
        # Distributions that carry their score forward while sampling (flow guides,
        # vigrad.flows.FlowDistribution) give the path-gradient log q term without an inverse pass.
        path_draw = getattr(fn, "path_draw", None)
        if path_draw is not None:
            value, log_q = path_draw(rng_key, sample_shape)
            return Draw(value, log_q=log_q)
        return Draw(self.sample(fn, rng_key, sample_shape))

    def log_q(self, fn: Any, value: jax.Array) -> jax.Array:
        return stop_parameters(fn).log_prob(value)
