"""The objective base class: NumPyro's ELBO interface over a program of particles.

A subclass only writes :meth:`Objective.program`, a differentiable reduction of
:class:`~vigrad.objectives.particles.Particles` to an
:class:`~vigrad.objectives.surrogate.Estimate`. Drawing particles under each site's estimator, the
control variates and the surrogate are shared, so every objective honours every estimator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import jax
from numpyro.infer.elbo import ELBO as _NumPyroELBO

from vigrad.estimators.assignment import Assignment, EstimatorSpec, default_estimator
from vigrad.estimators.base import Estimator
from vigrad.objectives.particles import Particles, Structure, draw_particles
from vigrad.objectives.surrogate import (
    Estimate,
    init_control_variate_states,
    surrogate_objective,
)

STATE_SITE = "vigrad$state"
"""Name under which an objective's state travels in NumPyro's mutable state."""


class Objective(_NumPyroELBO):
    """A variational objective as a program over particles, with per-site gradient estimators.

    Args:
        num_particles: number of particles ``K`` drawn per estimate (vectorised with ``vmap``).
        estimators: per-site estimators: a mapping from guide site name to estimator, or a callable
            over the site returning an estimator or ``None``. A site's own
            ``infer={"estimator": ...}`` wins over both. Default: :class:`~vigrad.Reparam` where
            the distribution has a reparameterised sampler, :class:`~vigrad.Score` otherwise.
    """

    can_infer_discrete = True
    # Whether the objective is an expectation of the log weight, so enumerated sites can be summed
    # out of each particle's log weight (the ELBO); see vigrad.estimators.enum.
    linear_in_log_weights: ClassVar[bool] = False

    def __init__(self, num_particles: int = 1, estimators: EstimatorSpec = None):
        if int(num_particles) < 1:
            raise ValueError(f"num_particles must be at least 1, got {num_particles}")
        super().__init__(num_particles=int(num_particles))
        self.assignment = Assignment(estimators, default=self.default_estimator)

    def default_estimator(self, fn: Any) -> Estimator:
        """The estimator of a site that no assignment names."""
        return default_estimator(fn)

    def program(self, particles: Particles) -> Estimate:
        """Reduce the particles to the objective estimate (override in subclasses)."""
        raise NotImplementedError

    def _estimate(
        self, rng_key: jax.Array, params: dict, model: Callable, guide: Callable, args, kwargs
    ) -> tuple[Estimate, Particles, Structure]:
        particles, structure = draw_particles(
            rng_key,
            self.num_particles,
            params,
            model,
            guide,
            args,
            kwargs,
            self.assignment,
            enumerate=self.linear_in_log_weights,
        )
        return self.program(particles), particles, structure

    def init_state(
        self, rng_key: jax.Array, params: dict, model: Callable, guide: Callable, *args, **kwargs
    ) -> dict[str, Any]:
        """The objective's initial state (control-variate states per score-function site)."""
        captured = {}

        def signals(rng_key, params):
            estimate, _, structure = self._estimate(rng_key, params, model, guide, args, kwargs)
            captured.update(structure=structure, independent=estimate.independent_signals)
            return estimate.signals

        # Keys and params enter as arguments, so nothing in the trace runs eagerly on them.
        shapes = jax.eval_shape(signals, rng_key, params)
        estimate = Estimate(None, None, shapes, captured["independent"])
        return init_control_variate_states(estimate, captured["structure"], self.num_particles)

    def loss_and_state(
        self,
        rng_key: jax.Array,
        params: dict,
        model: Callable,
        guide: Callable,
        args: tuple,
        kwargs: dict,
        state: dict[str, Any] | None,
    ) -> tuple[jax.Array, dict[str, Any]]:
        """Loss (negative objective, with unbiased gradient) and the next objective state."""
        estimate, particles, structure = self._estimate(rng_key, params, model, guide, args, kwargs)
        if state is None:
            state = init_control_variate_states(estimate, structure, self.num_particles)
        objective, new_state = surrogate_objective(estimate, particles, structure, state)
        return -objective, new_state

    def loss(self, rng_key, param_map, model, guide, *args, **kwargs) -> jax.Array:
        return self.loss_with_mutable_state(rng_key, param_map, model, guide, *args, **kwargs)[
            "loss"
        ]

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, *args, **kwargs) -> dict:
        params = {k: v for k, v in param_map.items() if k != STATE_SITE}
        state = param_map.get(STATE_SITE)
        loss, new_state = self.loss_and_state(rng_key, params, model, guide, args, kwargs, state)
        return {"loss": loss, "mutable_state": {STATE_SITE: new_state} if new_state else None}
