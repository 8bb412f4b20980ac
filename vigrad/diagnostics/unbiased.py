"""Check that an objective's gradient estimator is unbiased, as vigrad's own tests do.

At fixed parameters, ``M`` independent gradient estimates are drawn (``jax.vmap`` over keys) and
compared per coordinate with a reference:

* exact: a function ``params -> expected objective`` (closed form, quadrature, enumeration by
  hand), whose gradient is the reference: ``z = (mean - exact) / (sd / sqrt(M))``;
* independent: another unbiased estimator of the same gradient, drawn ``M_ref`` times:
  ``z = (mean - mean_ref) / sqrt(sd^2 / M + sd_ref^2 / M_ref)``. By default it is the same
  objective with every finite-support site enumerated where the objective allows it (then, for a
  guide of discrete sites only, the reference is exact and has no variance), every
  reparameterisable site under :class:`~vigrad.Reparam` and every other site under plain
  :class:`~vigrad.Score`.

The estimator passes when ``max |z|`` stays below the Bonferroni threshold
``Phi^-1(1 - alpha / (2 n))`` for ``n`` coordinates (4.4 to 4.9 for a few to a few dozen coordinates
at the default ``alpha = 1e-4``). A biased estimator fails once ``M`` is large enough for its bias
to exceed a few standard errors: the check proves presence of bias, never its absence, so pair it
with a negative control (a deliberately biased variant that it must reject).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtri

from vigrad.errors import EstimatorError
from vigrad.estimators.assignment import Assignment
from vigrad.estimators.base import Estimator
from vigrad.estimators.enum import Enumerate
from vigrad.estimators.reparam import Reparam
from vigrad.estimators.score import Score
from vigrad.objectives.base import Objective
from vigrad.traces import trace_program, values


@dataclasses.dataclass(frozen=True)
class UnbiasedCheck:
    """The outcome of :func:`check_unbiased`.

    Attributes:
        passed: whether every coordinate's ``|z|`` is below ``threshold``.
        max_z: the largest ``|z|``.
        threshold: the Bonferroni threshold used.
        z: parameter name -> ``|z|`` per coordinate.
        mean: parameter name -> mean gradient estimate of the objective (to maximise).
        reference: parameter name -> the reference gradient (exact or mean of the reference).
        reference_kind: ``"exact"`` or ``"independent"``.
        num_samples: ``M``.
    """

    passed: bool
    max_z: float
    threshold: float
    z: dict[str, np.ndarray]
    mean: dict[str, np.ndarray]
    reference: dict[str, np.ndarray]
    reference_kind: str
    num_samples: int

    def __str__(self) -> str:
        verdict = "no bias detected" if self.passed else "BIASED"
        lines = [
            f"{verdict}: max |z| = {self.max_z:.2f} (threshold {self.threshold:.2f}, "
            f"M = {self.num_samples}, reference: {self.reference_kind})",
            f"{'parameter':<20} {'max |z|':>8} {'mean gradient':>16} {'reference':>16}",
        ]
        for name, z in self.z.items():
            # The coordinate with the largest |z| represents the parameter.
            worst = int(np.argmax(np.ravel(z)))
            mean, ref = (float(np.ravel(x)[worst]) for x in (self.mean[name], self.reference[name]))
            lines.append(f"{name:<20} {float(np.max(z)):>8.2f} {mean:>16.5g} {ref:>16.5g}")
        return "\n".join(lines)


class _ReferenceAssignment(Assignment):
    """Every site under the plainest unbiased estimator (overriding the guide's own choices)."""

    def __init__(self, enumerate_finite: bool):
        super().__init__()
        self.enumerate_finite = enumerate_finite

    def resolve(self, site: dict) -> Estimator:
        fn = site["fn"]
        if self.enumerate_finite and getattr(fn, "has_enumerate_support", False):
            return Enumerate()
        return Reparam() if getattr(fn, "has_rsample", False) else Score()


def _gradient_samples(objective, model, guide, args, kwargs, params, key, num):
    loss = lambda k, p: objective.loss(k, p, model, guide, *args, **kwargs)
    # Gradients of the objective (to maximise), the negative of the loss's.
    one = lambda k: jax.tree.map(jnp.negative, jax.grad(lambda p: loss(k, p))(params))
    return jax.jit(jax.vmap(one))(jax.random.split(key, num))


def _initial_params(model, guide, args, kwargs, key) -> dict:
    params = {}
    for program in (guide, model):
        sites = trace_program(program, args, kwargs, params=params, rng_key=key)
        params.update(values(sites.params))
    return params


def _reference_objective(objective: Objective, model, guide, args, kwargs, params, key):
    for enumerate_finite in (True, False):
        reference = copy.copy(objective)
        reference.assignment = _ReferenceAssignment(enumerate_finite)
        try:
            jax.eval_shape(
                lambda k, p, r=reference: r.loss(k, p, model, guide, *args, **kwargs), key, params
            )
        except EstimatorError:
            continue
        return reference
    raise EstimatorError(
        f"check_unbiased: {objective.name} accepts neither Reparam() nor Score() on every site, "
        "so there is no default reference estimator. Pass reference= an exact expected-objective "
        "function params -> value, or another objective estimating the same gradient."
    )


def check_unbiased(
    objective: Objective,
    model: Callable,
    guide: Callable,
    *args: Any,
    params: dict | None = None,
    reference: Callable[[dict], jax.Array] | Objective | None = None,
    num_samples: int = 4000,
    num_reference: int | None = None,
    rng_key: jax.Array | None = None,
    alpha: float = 1e-4,
    **kwargs: Any,
) -> UnbiasedCheck:
    """Test ``objective``'s gradient estimate for bias at ``params`` (see the module docstring).

    Args:
        objective: the vigrad objective to check (its per-site estimators as configured).
        model, guide, args, kwargs: as given to the objective's loss.
        params: constrained parameter values (default: the guide's and model's initial values).
        reference: ``None`` (the default independent estimator), a function of ``params`` giving
            the exact expected objective, or another objective estimating the same gradient.
        num_samples: ``M``, the number of gradient estimates (vectorised).
        num_reference: draws of an independent reference (default ``4 M``).
        rng_key: the key (default ``jax.random.key(0)``); the check is deterministic given it.
        alpha: the family-wise false-alarm rate of the Bonferroni threshold.
    """
    key = jax.random.key(0) if rng_key is None else rng_key
    key_init, key_est, key_ref = jax.random.split(key, 3)
    if params is None:
        params = _initial_params(model, guide, args, kwargs, key_init)
    estimates = _gradient_samples(
        objective, model, guide, args, kwargs, params, key_est, num_samples
    )
    if reference is not None and not isinstance(reference, Objective):
        exact = jax.grad(reference)(params)
        ref_mean = jax.tree.map(np.asarray, exact)
        ref_var, ref_num, kind = jax.tree.map(np.zeros_like, ref_mean), 1, "exact"
    else:
        if reference is None:
            reference = _reference_objective(objective, model, guide, args, kwargs, params, key)
        ref_num = int(num_reference or 4 * num_samples)
        draws = _gradient_samples(reference, model, guide, args, kwargs, params, key_ref, ref_num)
        ref_mean = jax.tree.map(lambda x: np.asarray(x).mean(0), draws)
        ref_var = jax.tree.map(lambda x: np.asarray(x).var(0, ddof=1), draws)
        kind = "independent"
    z, mean = {}, {}
    for name in params:
        est = np.asarray(estimates[name], dtype=np.float64)
        mean[name] = est.mean(0)
        se = np.sqrt(est.var(0, ddof=1) / num_samples + np.asarray(ref_var[name]) / ref_num)
        ref = np.asarray(ref_mean[name], dtype=np.float64)
        diff = np.abs(mean[name] - ref)
        # A coordinate without variance must match up to rounding.
        rounding = 1e-5 * (1.0 + np.abs(ref))
        exact_z = np.where(diff <= rounding, 0.0, np.inf)
        z[name] = np.where(se > 0, diff / np.where(se > 0, se, 1.0), exact_z)
    n = sum(int(np.size(v)) for v in z.values())
    threshold = float(ndtri(1.0 - alpha / (2.0 * max(n, 1))))
    max_z = max(float(np.max(v)) for v in z.values())
    reference_mean = {k: np.asarray(v) for k, v in ref_mean.items()}
    return UnbiasedCheck(
        max_z < threshold, max_z, threshold, z, mean, reference_mean, kind, num_samples
    )
