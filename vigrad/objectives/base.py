"""The objective base class: NumPyro's ELBO interface over an objective program.

A subclass writes :meth:`Objective.program`, a function of the
:class:`~vigrad.objectives.context.ProgramContext` returning the estimate to maximise (built-ins
and user objectives alike). Drawing under each site's estimator, the legality checks, the learning
signals, the control variates and the surrogate are shared, so every objective honours every
estimator or refuses it with an error.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import jax
from numpyro.infer.elbo import ELBO as _NumPyroELBO

from vigrad.estimators.assignment import Assignment, EstimatorSpec, default_estimator
from vigrad.estimators.base import Estimator
from vigrad.objectives.context import ProgramContext, _Run
from vigrad.objectives.surrogate import init_control_variate_states, surrogate_objective
from vigrad.objectives.transform import Estimate, Evaluation, transform
from vigrad.reprs import arguments_repr

STATE_SITE = "vigrad$state"
"""Name under which an objective's state travels in NumPyro's mutable state."""

MUTABLE = "numpyro$mutable"
"""Key of the ``numpyro.mutable`` values in an objective's state (as ``vigrad.fit`` carries it)."""


class Objective(_NumPyroELBO):
    """A variational objective written as a program, with per-site gradient estimators.

    Args:
        num_particles: number of particles ``K`` the program draws (vectorised with ``vmap``).
        estimators: per-site estimators: a mapping from site name to estimator, or a callable
            over the site returning an estimator or ``None``. A site's own
            ``infer={"estimator": ...}`` wins over both. Default: :class:`~vigrad.Reparam` where
            the distribution has a reparameterised sampler, :class:`~vigrad.Score` otherwise.
        leave_one_out: give score-function sites in a block of ``K >= 2`` particles the
            per-particle baseline ``F_{-k}`` where their signal is the whole estimate.
    """

    can_infer_discrete = True
    # NumPyro's SVI reads it too: with True its initialisation scores the model on one sample.
    multi_sample_guide = False
    # Set to False only to show, as a negative control, that a biased combination is detected.
    check_unbiasedness = True

    def __init__(
        self, num_particles: int = 1, estimators: EstimatorSpec = None, leave_one_out: bool = True
    ):
        if int(num_particles) < 1:
            raise ValueError(f"num_particles must be at least 1, got {num_particles}")
        super().__init__(num_particles=int(num_particles))
        self.assignment = Assignment(estimators, default=self.default_estimator)
        self.leave_one_out = bool(leave_one_out)

    def __repr__(self) -> str:
        """``ELBO(num_particles=4, estimators={'z': PathGradient()})``: non-default arguments."""
        return arguments_repr(
            self, {"estimators": self.assignment.by_name or self.assignment.by_site}
        )

    @property
    def name(self) -> str:
        return type(self).__name__

    def default_estimator(self, fn: Any) -> Estimator:
        """The estimator of a site that no assignment names."""
        return default_estimator(fn)

    def program(self, p: ProgramContext) -> jax.Array | Estimate:
        """The objective estimate from the context's primitives (override in subclasses)."""
        raise NotImplementedError

    def evaluate(
        self, rng_key: jax.Array, params: dict, model: Callable, guide: Callable, args, kwargs
    ) -> Evaluation:
        """The program run under the transformation (checks, signals; nothing compiled)."""
        run = self._run(params, model, guide, args, kwargs)
        return transform(
            self.program, self.name, run, rng_key, self.leave_one_out, self.check_unbiasedness
        )

    def _run(self, params: dict, model: Callable, guide: Callable, args, kwargs) -> _Run:
        """What every context of one run of the program shares."""
        return _Run(
            model,
            guide,
            tuple(args),
            dict(kwargs),
            params,
            self.assignment,
            multi_sample_guide=self.multi_sample_guide,
        )

    def init_state(
        self, rng_key: jax.Array, params: dict, model: Callable, guide: Callable, *args, **kwargs
    ) -> dict[str, Any]:
        """The objective's initial state (control-variate states per score-function site)."""
        captured = {}

        def signals(rng_key, params):
            evaluation = self.evaluate(rng_key, params, model, guide, args, kwargs)
            captured.update(
                nodes=evaluation.nodes,
                independent=evaluation.independent,
                has_mutable=bool(evaluation.mutable),
            )
            return evaluation.signals

        # Keys and params enter as arguments, so nothing in the trace runs eagerly on them.
        shapes = jax.eval_shape(signals, rng_key, params)
        evaluation = Evaluation(None, None, captured["nodes"], {}, shapes, captured["independent"])
        state = init_control_variate_states(evaluation)
        if captured["has_mutable"]:
            # The mutable sites' values after one evaluation, as numpyro.infer.SVI starts them.
            mutable = lambda k, p: self.evaluate(k, p, model, guide, args, kwargs).mutable
            state[MUTABLE] = jax.jit(mutable)(rng_key, params)
        return state

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
        """Loss (negative objective, with unbiased gradient) and the next objective state.

        The state holds the control variates' states and, under ``MUTABLE``, the values of the
        programs' ``numpyro.mutable`` sites, which are given to the programs and updated.
        """
        if state and MUTABLE in state:
            params = {**params, **jax.lax.stop_gradient(state[MUTABLE])}
        evaluation = self.evaluate(rng_key, params, model, guide, args, kwargs)
        if state is None:
            state = init_control_variate_states(evaluation)
        objective, new_state = surrogate_objective(evaluation, state)
        if evaluation.mutable:
            new_state[MUTABLE] = evaluation.mutable
        return -objective, new_state

    def loss(self, rng_key, param_map, model, guide, *args, **kwargs) -> jax.Array:
        out = self.loss_with_mutable_state(rng_key, param_map, model, guide, *args, **kwargs)
        state = (out["mutable_state"] or {}).get(STATE_SITE, {})
        if stateful := sorted(site for site, s in state.items() if jax.tree.leaves(s)):
            # numpyro.infer.SVI calls loss() when the model has no numpyro.mutable site and
            # drops the state, so a moving average or learned baseline never leaves its start.
            warnings.warn(
                f"{type(self).__name__}.loss() drops the control-variate state of site(s) "
                f"{stateful} (MovingAverage, Learned): each call starts from the initial "
                "baseline, unbiased but without its variance reduction. Train with vigrad.fit, "
                "which carries the state from step to step.",
                stacklevel=2,
            )
        return out["loss"]

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, *args, **kwargs) -> dict:
        params = {k: v for k, v in param_map.items() if k != STATE_SITE}
        state = param_map.get(STATE_SITE)
        loss, new_state = self.loss_and_state(rng_key, params, model, guide, args, kwargs, state)
        # NumPyro's SVI keeps mutable sites by name and passes them back among the parameters.
        mutable = new_state.pop(MUTABLE, {})
        if new_state:
            mutable = {**mutable, STATE_SITE: new_state}
        return {"loss": loss, "mutable_state": mutable or None}
