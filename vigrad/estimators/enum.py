"""Exact enumeration of a finite-support guide site.

For a site ``z`` with finite support, the ELBO's expectation over ``z`` is a sum,

    E_q[f(z)] = sum_k q(z = k) f(k),

whose gradient ``sum_k [grad q(k) f(k) + q(k) grad f(k)]`` has no sampling noise in ``z`` at all.
``f`` is the cost downstream of ``z`` (the model and guide log densities that depend on it). Each
particle is evaluated once per support value ("branch"); a site in plates is enumerated in
parallel over its plate elements: branch ``k`` sets every element to ``k``, and element ``n``'s
cost in branch ``k`` is ``f_n(k)``. This is exact when each downstream term depends on ``z_n``
within ``z``'s plates only, which vigrad checks (as ``TraceEnum_ELBO`` relies on plates).

Enumerate serves the ELBO (an expectation of the log weight); multi-sample objectives combine log
weights non-linearly, so an expected log weight does not estimate them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from vigrad.errors import EstimatorError
from vigrad.estimators.base import Estimator


def require_finite_support(estimator: Estimator, site_name: str, fn: Any) -> None:
    if not getattr(fn, "has_enumerate_support", False):
        raise EstimatorError(
            f"{type(estimator).__name__}() cannot serve site '{site_name}': {type(fn).__name__} "
            "has no finite support to sum over. Use vigrad.Score() or a pathwise estimator for it."
        )


def num_branches(fn: Any) -> int:
    """The number of support values of the site's distribution."""
    return int(fn.enumerate_support(expand=False).shape[0])


def branch_value(
    fn: Any, branch: jax.Array, sample_shape: tuple[int, ...]
) -> tuple[jax.Array, jax.Array]:
    """The site's value in ``branch`` (every element at the same support value) and whether the
    branch is real (branches beyond this site's support, shared with larger sites, repeat its
    first value and get weight zero)."""
    support = fn.enumerate_support(expand=False)
    size = support.shape[0]
    value = support[jnp.where(branch < size, branch, 0)]
    return jnp.broadcast_to(value, fn.shape(sample_shape)), branch < size


@dataclasses.dataclass(frozen=True)
class Enumerate(Estimator):
    """Sum a discrete guide site out exactly (zero variance from this site), in ``vigrad.ELBO``.

    Cost: one evaluation of the particle per support value of the site (all enumerated sites of a
    guide share the branches, so the cost is the largest support size, not the product).
    """

    is_enumerated: ClassVar[bool] = True

    def check(self, site_name: str, fn: Any) -> None:
        require_finite_support(self, site_name, fn)

    num_branches = staticmethod(lambda fn: num_branches(fn))
    branch_value = staticmethod(lambda fn, branch, shape: branch_value(fn, branch, shape))

    def sample(self, fn: Any, rng_key: jax.Array, sample_shape: tuple[int, ...]) -> jax.Array:
        raise EstimatorError(
            "Enumerate() sums over the site's values instead of sampling it; it is used through "
            "vigrad.ELBO."
        )
