"""Objectives written by users: any program over the context's primitives.

The most general form is a function of the :class:`~vigrad.objectives.context.ProgramContext`
returning the estimate to maximise:

    @vigrad.program
    def iwelbo(p):
        log_w = p.particles(8).log_w
        return jax.nn.logsumexp(log_w) - jnp.log(8)

and the common special case, a differentiable function ``F(log_w)`` of ``K`` particles' log weights,
has its own decorator:

    @vigrad.objective(num_particles=8)
    def iwelbo(log_w):
        return jax.nn.logsumexp(log_w) - jnp.log(log_w.shape[0])

Either way ``jax.grad`` of the loss is an unbiased estimate of the gradient of ``E[F]`` for every
mix of per-site estimators that is unbiased in that program, and every other mix is refused before
compilation (see :mod:`vigrad.objectives.transform`).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from vigrad.estimators.assignment import EstimatorSpec
from vigrad.objectives.base import Objective
from vigrad.objectives.context import ProgramContext
from vigrad.objectives.transform import Estimate
from vigrad.reprs import arguments_repr


def log_mean_exp(x: jax.Array, axis: int = 0) -> jax.Array:
    """``log (1/n) sum_i exp(x_i)`` along ``axis``, in log space."""
    return jax.nn.logsumexp(x, axis=axis) - jnp.log(x.shape[axis])


class Program(Objective):
    """An objective from a program ``fn(p)`` (see the module docstring).

    Args:
        fn: the program: a function of the context returning a scalar (or ``vigrad.Estimate``).
        estimators: per-site estimators (as for :class:`vigrad.ELBO`).
        leave_one_out: give score-function sites of particle blocks the baseline ``F_{-k}``.
        num_particles: recorded for NumPyro's interface; the program chooses its own particles.
    """

    def __init__(
        self,
        fn: Callable[[ProgramContext], jax.Array | Estimate],
        estimators: EstimatorSpec = None,
        leave_one_out: bool = True,
        num_particles: int = 1,
    ):
        super().__init__(num_particles, estimators, leave_one_out)
        self.fn = fn

    @property
    def name(self) -> str:
        return getattr(self.fn, "__name__", type(self).__name__)

    def program(self, p: ProgramContext) -> jax.Array | Estimate:
        return self.fn(p)


def program(
    fn: Callable[[ProgramContext], jax.Array | Estimate] | None = None,
    *,
    estimators: EstimatorSpec = None,
    leave_one_out: bool = True,
):
    """Decorator turning a program ``fn(p)`` into an objective (:class:`Program`)."""

    def wrap(f):
        return Program(f, estimators=estimators, leave_one_out=leave_one_out)

    return wrap if fn is None else wrap(fn)


class LogWeightProgram(Program):
    """An objective ``F(log_w)`` over the log weights of ``K`` guide particles."""

    def __init__(
        self,
        fn: Callable[[jax.Array], jax.Array],
        num_particles: int = 1,
        estimators: EstimatorSpec = None,
        leave_one_out: bool = True,
    ):
        self.log_weight_fn = fn
        super().__init__(self._over_particles, estimators, leave_one_out, num_particles)

    @property
    def name(self) -> str:
        return getattr(self.log_weight_fn, "__name__", type(self).__name__)

    def __repr__(self) -> str:
        # The user's F(log_w), not the program built from it, is the ``fn`` it was given.
        spec = self.assignment.by_name or self.assignment.by_site
        return arguments_repr(self, {"fn": self.log_weight_fn, "estimators": spec})

    def _over_particles(self, p: ProgramContext) -> jax.Array:
        return self.log_weight_fn(p.particles(self.num_particles).log_w)


def objective(
    fn: Callable[[jax.Array], jax.Array] | None = None,
    *,
    num_particles: int = 1,
    estimators: EstimatorSpec = None,
    leave_one_out: bool = True,
):
    """Decorator turning ``F(log_w)``, a function of ``K`` particles' log weights, into an
    objective. Score-function sites get the leave-one-out baseline ``F_{-k}`` when ``K >= 2``."""

    def wrap(f):
        return LogWeightProgram(f, num_particles, estimators, leave_one_out)

    return wrap if fn is None else wrap(fn)
