"""A stochastic-gradient MCMC kernel: an update rule, a gradient estimator and a step size.

The three parts are independent and composed, not inherited:

- an **update rule** (:class:`Update`): a pure ``init(position)`` / ``step(rng_key, state, grad,
  step_size, **params)`` pair over a ``NamedTuple`` state, as in BlackJAX (``vigrad.sgmcmc.sgld``,
  ``psgld``, ``sghmc``, ``preconditioned_sgld``); it receives the gradient estimate, computed;
- a **gradient estimator**: a frozen dataclass with ``prepare`` (once, before sampling, outside the
  compiled loop), ``start`` (a preferred starting point or ``None``) and ``estimate`` (per step,
  inside it): :class:`~vigrad.sgmcmc.minibatch.Minibatch`,
  :class:`~vigrad.sgmcmc.control_variates.ControlVariates`,
  :class:`~vigrad.sgmcmc.laplace_metric.LaplaceMetric`,
  :class:`~vigrad.sgmcmc.federated.Shards`, :class:`~vigrad.sgmcmc.federated.Conducive`;
- a **step size**: a number, or a schedule ``t -> ε_t`` such as :func:`polynomial_decay`.

A kernel is any :class:`Kernel` (a named one such as ``SGLD``, or :meth:`Kernel.of` parts).

Static and data parts. The compiled sampling loop is cached by :meth:`Kernel.static`: the kernel
with every array-valued field (shard labels, given approximations, a given centre: fields made with
:func:`data_field`) and a constant step size removed. What is left is hashable (functions,
numbers, strings, tuples), so two runs that differ only in those arrays or in ε share one
compilation: the arrays reach the loop only through what ``prepare`` computes from them (the
"aux"), and ε as an argument, both traced.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp

StepSize = float | Callable[[jax.Array], jax.Array]


def data_field(default: Any = None) -> Any:
    """A dataclass field holding arrays: used by ``prepare`` only, left out of the static part
    (and of ``==`` and ``hash``)."""
    return dataclasses.field(default=default, compare=False, metadata={"data": True})


def _strip(obj: Any) -> Any:
    """``obj`` with its data fields set to ``None``, in nested estimators too."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return obj
    changes = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.metadata.get("data"):
            changes[f.name] = None
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            changes[f.name] = _strip(value)
    return dataclasses.replace(obj, **changes) if changes else obj


@dataclasses.dataclass(frozen=True)
class PolynomialDecay:
    """ε_t = a (b + t)^(-γ) (Welling & Teh 2011; γ ∈ (0.5, 1] for the decreasing-step guarantees).
    A frozen dataclass, so equal schedules hash equal and share a compiled loop."""

    a: float
    b: float = 1.0
    gamma: float = 0.55

    def __call__(self, t: jax.Array) -> jax.Array:
        return self.a * (self.b + t) ** (-self.gamma)


def polynomial_decay(a: float, b: float = 1.0, gamma: float = 0.55) -> PolynomialDecay:
    """Step-size schedule ε_t = a (b + t)^(-γ) (Welling & Teh 2011; γ ∈ (0.5, 1])."""
    return PolynomialDecay(float(a), float(b), float(gamma))


@dataclasses.dataclass(frozen=True)
class Update:
    """An update rule: ``init(position) -> state`` and ``step(rng_key, state, grad, step_size,
    **params, **data) -> state``, with hyperparameters ``params`` (static numbers) and the names of
    the prepared-data fields the step reads (``data``, e.g. the preconditioned rule's
    ``scale_tril``)."""

    init: Callable
    step: Callable
    params: tuple[tuple[str, Any], ...] = ()
    data: tuple[str, ...] = ()

    @classmethod
    def of(cls, rule: ModuleType, *, data: tuple[str, ...] = (), **params: Any) -> Update:
        """The update rule of a module defining ``init`` and ``step``."""
        return cls(rule.init, rule.step, tuple(sorted(params.items())), tuple(data))


class Kernel:
    """An update rule (``update``), a gradient estimator (``gradient``) and a step size
    (``step_size``), composed.

    The named kernels (:func:`~vigrad.sgmcmc.SGLD`, :func:`~vigrad.sgmcmc.FSGLD`, ...) are frozen
    dataclasses whose fields are their user-facing parameters and whose ``update`` and
    ``gradient`` properties say which parts they compose; :meth:`of` composes any two parts
    directly, e.g. ``Kernel.of(Update.of(psgld), ControlVariates(), 1e-3)``. Nothing here is
    overridden by a subclass.
    """

    step_size: StepSize
    update: Update
    gradient: Any

    @staticmethod
    def of(update: Update, gradient: Any, step_size: StepSize) -> Composed:
        return Composed(update, gradient, step_size)

    @property
    def name(self) -> str:
        return type(self).__name__

    def step_size_at(self, t: jax.Array) -> jax.Array:
        if callable(self.step_size):
            return jnp.asarray(self.step_size(t))
        return jnp.asarray(self.step_size)

    def init(self, position: Any) -> Any:
        return self.update.init(position)

    def static(self) -> Kernel:
        """The hashable part that identifies the compiled loop (see the module docstring)."""
        kernel = _strip(self)
        if not callable(self.step_size):
            kernel = dataclasses.replace(kernel, step_size=None)
        try:
            hash(kernel)
        except TypeError as err:
            raise TypeError(
                f"the static part of kernel {self.name} is not hashable ({err}): declare "
                "array-valued fields with vigrad.sgmcmc.kernel.data_field() and give "
                "hyperparameters as numbers, strings or tuples"
            ) from None
        return kernel

    def transition(
        self,
        problem: Any,
        aux: Any,
        state: Any,
        rng_key: jax.Array,
        t: jax.Array,
        chain_key: jax.Array,
        step_size: jax.Array,
    ) -> Any:
        """One step: the estimator's gradient at the state's position, then the update rule.

        ``rng_key`` holds two keys (gradient, noise); ``chain_key`` is the chain's own key, for
        estimators whose choices last several steps (a federated round's shard).
        """
        grad = self.gradient.estimate(problem, aux, state.position, rng_key[0], t, chain_key)
        update = self.update
        data = {name: getattr(aux, name) for name in update.data}
        return update.step(rng_key[1], state, grad, step_size, **dict(update.params), **data)


@dataclasses.dataclass(frozen=True)
class Composed(Kernel):
    """Any update rule with any gradient estimator (:meth:`Kernel.of`)."""

    update: Update
    gradient: Any
    step_size: StepSize
