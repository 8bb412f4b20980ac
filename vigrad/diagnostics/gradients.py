"""Gradient diagnostics at fixed parameters: mean, variance, signal-to-noise and cost per estimate.

An unbiased gradient estimator is judged by two numbers: how noisy one estimate is (its variance)
and how long one estimate takes. At fixed parameters, ``M`` independent estimates ``g_1..g_M``
(one key each, vectorised) give per coordinate the mean ``g_bar``, the variance ``s^2`` and the
signal-to-noise ratio ``|g_bar| / s``. Averaging ``n`` estimates divides the variance by ``n`` and
multiplies the time by ``n``, so ``variance x seconds`` is the variance one second of compute buys,
inverted: the quantity to minimise when choosing between unbiased estimators (Glynn & Whitt 1992,
"The asymptotic efficiency of simulation estimators").
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to

from vigrad.errors import EstimatorError
from vigrad.estimators.assignment import Assignment
from vigrad.estimators.base import Estimator
from vigrad.objectives.base import Objective
from vigrad.objectives.elbo import ELBO
from vigrad.traces import ensure_prototype, trace_model_and_guide

__all__ = [
    "GradientStats",
    "ensure_prototype",
    "gradient_variance",
    "make_objective",
    "param_constraints",
]


@dataclasses.dataclass
class GradientStats:
    """What :func:`gradient_variance` measured.

    Attributes:
        mean: parameter name -> mean of the gradient estimates (of the loss, the negative objective).
        variance: parameter name -> per-coordinate variance of one estimate.
        num_samples: number of independent estimates ``M`` behind the statistics.
        num_particles: particles per estimate.
        seconds: median wall time of one call of the jitted estimate (compilation excluded,
            Python dispatch included), over the ``M`` calls that produced the statistics.
        unconstrained: whether gradients are with respect to the unconstrained parameters (as the
            optimiser in :func:`vigrad.fit` sees them) or the constrained ones.
        objective: name of the objective.
        timer: ``timer(n)`` re-times the same compiled estimate: the median wall time of ``n``
            calls (used to interleave timings of several candidates).
    """

    mean: dict[str, np.ndarray]
    variance: dict[str, np.ndarray]
    num_samples: int
    num_particles: int
    seconds: float
    unconstrained: bool
    objective: str
    timer: Callable[[int], float] | None = dataclasses.field(
        default=None, repr=False, compare=False
    )

    @property
    def snr(self) -> dict[str, np.ndarray]:
        """Per-coordinate signal-to-noise ratio ``|mean| / sd`` (``inf`` where the sd is 0)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return {k: np.abs(m) / np.sqrt(self.variance[k]) for k, m in self.mean.items()}

    def total_variance(self, names: Any = None) -> float:
        """Trace of the covariance of one estimate, over ``names`` (default: every parameter)."""
        names = self.mean.keys() if names is None else names
        return float(sum(np.sum(self.variance[n]) for n in names))

    def total_snr(self, names: Any = None) -> float:
        """``||mean|| / sqrt(trace of the covariance)`` over ``names`` (default: every parameter)."""
        names = list(self.mean.keys() if names is None else names)
        signal = float(np.sqrt(sum(np.sum(self.mean[n] ** 2) for n in names)))
        noise = float(np.sqrt(self.total_variance(names)))
        return signal / noise if noise > 0 else float("inf")

    def __str__(self) -> str:
        space = "unconstrained" if self.unconstrained else "constrained"
        lines = [
            f"Gradient of the {self.objective} loss ({space} parameters): {self.num_samples} "
            f"estimates of {self.num_particles} particle(s) each"
            f", {self.seconds * 1e3:.3g} ms per estimate",
            f"  {'parameter':<24}{'size':>6}{'|mean|':>12}{'variance':>12}{'SNR':>10}",
        ]
        for name in self.mean:
            lines.append(
                f"  {name:<24}{np.size(self.mean[name]):>6}"
                f"{np.linalg.norm(np.ravel(self.mean[name])):>12.4g}"
                f"{self.total_variance([name]):>12.4g}{self.total_snr([name]):>10.3g}"
            )
        return "\n".join(lines)


def make_objective(
    objective: Any, num_particles: int, estimators: Mapping[str, Estimator] | None
) -> Objective:
    """The objective to measure, with ``estimators`` overriding its per-site assignment.

    ``objective`` is ``None`` (the ELBO), an objective class or factory called as
    ``objective(num_particles=..., estimators=...)``, or an objective instance, whose own particles
    and settings are kept and whose mapping is updated with ``estimators``.
    """
    if objective is None:
        return ELBO(num_particles=num_particles, estimators=dict(estimators or {}))
    if isinstance(objective, Objective):
        fixed = getattr(objective, "fixed_estimator", None)
        if fixed is not None:
            _require_fixed(objective, fixed, estimators)
            return objective
        obj = copy.copy(objective)
        old = objective.assignment
        assignment = Assignment({**old.by_name, **dict(estimators or {})}, default=old.default)
        assignment.by_site = old.by_site
        obj.assignment = assignment
        return obj
    return objective(num_particles=num_particles, estimators=dict(estimators or {}))


def _require_fixed(objective: Objective, fixed: Estimator, estimators: Mapping | None) -> None:
    """An objective that draws every site one way cannot be measured under other estimators."""
    other = {n: e for n, e in (estimators or {}).items() if e != fixed}
    if other:
        raise EstimatorError(
            f"{objective.name}: this objective draws every guide site as {fixed!r} whatever the "
            f"estimators, so {other} would be reported but not used. Measure it without "
            "per-site estimators, or use an objective that honours them (e.g. RWS(wake='dreg'))."
        )


def param_constraints(
    model: Callable, guide: Callable, params: Mapping[str, Any], args: tuple, kwargs: dict
) -> dict[str, Any]:
    """The constraint of every ``numpyro.param`` site of the guide and the model named in ``params``."""
    # Traced abstractly: only the sites' constraints are wanted, so nothing is computed.
    traced = trace_model_and_guide(model, guide, args, kwargs, params=params, abstract=True)
    return {
        name: site["kwargs"].get("constraint", constraints.real)
        for sites in traced
        for name, site in sites.params.items()
        if name in params
    }


def _key_list(key: jax.Array, n: int) -> list[jax.Array]:
    """``n`` independent keys as separate arrays, split once (not one slicing op per key)."""
    return list(jax.random.split(key, n)) if n > 0 else []


def gradient_variance(
    model: Callable,
    guide: Callable,
    params: Mapping[str, Any],
    estimators: Mapping[str, Estimator] | None = None,
    *args: Any,
    num_particles: int = 1,
    num_samples: int = 256,
    rng_key: jax.Array | None = None,
    objective: Any = None,
    unconstrained: bool = True,
    warmup: int = 100,
    **kwargs: Any,
) -> GradientStats:
    """Mean, variance and signal-to-noise of each parameter's gradient, and the cost per estimate.

    Args:
        model, guide: NumPyro programs; ``*args`` and ``**kwargs`` are passed to both.
        params: constrained parameter values (e.g. :attr:`vigrad.FitResult.params`); gradients are
            taken with respect to these names.
        estimators: site name -> estimator for the sites to set (others: the objective's own
            assignment, by default Reparam where reparameterisable, else Score).
        num_particles: particles per estimate (ignored when ``objective`` is an instance).
        num_samples: number of independent estimates ``M``.
        rng_key: key for the estimates (default ``jax.random.key(0)``).
        objective: ``None`` for :class:`vigrad.ELBO`, an objective class, or an instance (see
            :func:`make_objective`).
        unconstrained: differentiate with respect to the unconstrained parameters, as the fit loop
            does (default), or the constrained ones.
        warmup: estimates run at ``params`` before measuring, to bring stateful control variates
            (moving averages, learned baselines) to their steady state there; the state is then
            held fixed, so every measured estimate sees the same baseline, independent of its sample.

    Returns:
        A :class:`GradientStats`; its gradients are of the loss (the negative objective).
    """
    rng_key = jax.random.key(0) if rng_key is None else rng_key
    obj = make_objective(objective, num_particles, estimators)
    params = {k: jnp.asarray(v) for k, v in params.items()}
    cons = param_constraints(model, guide, params, args, kwargs)
    names = sorted(cons)
    if not names:
        raise ValueError(
            "gradient_variance(): none of the given params is a numpyro.param site of the guide or "
            f"the model (given: {sorted(params)})"
        )
    fixed = {k: v for k, v in params.items() if k not in cons}

    def to_free(p):
        return {n: biject_to(cons[n]).inv(p[n]) if unconstrained else p[n] for n in names}

    def to_params(free):
        if unconstrained:
            free = {n: biject_to(cons[n])(free[n]) for n in names}
        return {**fixed, **free}

    free = to_free(params)
    init_key, warm_key, sample_key = jax.random.split(rng_key, 3)
    state = obj.init_state(init_key, params, model, guide, *args, **kwargs)

    def loss_and_state(free, state, k):
        return obj.loss_and_state(k, to_params(free), model, guide, args, kwargs, state)

    @jax.jit
    def step(free, state, k):
        """One gradient estimate and the objective's next state: warm-up and measurement share
        this one compiled function."""
        return jax.grad(loss_and_state, has_aux=True)(free, state, k)

    if int(num_samples) < 2:
        raise ValueError(f"num_samples must be at least 2, got {num_samples}")
    if jax.tree.leaves(state):
        for k in _key_list(warm_key, int(warmup)):
            state = step(free, state, k)[1]
    keys = _key_list(sample_key, int(num_samples))
    jax.block_until_ready(step(free, state, keys[0]))
    grads, times = [], []
    for k in keys:
        start = time.perf_counter()
        g = jax.block_until_ready(step(free, state, k)[0])
        times.append(time.perf_counter() - start)
        grads.append(g)
    stacked = {n: np.stack([np.asarray(g[n]) for g in grads]) for n in names}
    mean = {n: np.mean(v, axis=0) for n, v in stacked.items()}
    var = {n: np.var(v, axis=0, ddof=1) for n, v in stacked.items()}
    seconds = statistics.median(times)

    def timer(n: int) -> float:
        out = []
        for k in keys[:n]:
            start = time.perf_counter()
            jax.block_until_ready(step(free, state, k)[0])
            out.append(time.perf_counter() - start)
        return statistics.median(out)

    return GradientStats(
        mean=mean,
        variance=var,
        num_samples=int(num_samples),
        num_particles=int(obj.num_particles),
        seconds=seconds,
        unconstrained=unconstrained,
        objective=type(obj).__name__,
        timer=timer,
    )
