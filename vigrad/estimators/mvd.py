"""Measure-valued derivatives of discrete sites (Pflug 1989; Mohamed, Rosca, Figurnov & Mnih 2020,
"Monte Carlo Gradient Estimation in Machine Learning", JMLR, section 6).

The derivative of a distribution is written as a difference of two distributions (its weak
derivative). For a site with finite support, that decomposition is exact over the support values:

    grad_phi E_q[f(z)] = sum_b grad_phi q_phi(b) f(b) + E_q[grad_phi f(z)]

(for the Bernoulli, ``d/dp E f = f(1) - f(0)``: the positive part is a point mass at 1, the negative
part at 0). The site's value is still a sample, so everything else in the particle (its log weight,
the pathwise gradients through the rest) uses the draw; only the site's own derivative is computed from ``f`` evaluated at every support value.
``f`` is the cost downstream of the site, as for Rao-Blackwellised score terms, computed in one
trace per support value in which only this site is set (sites downstream of it are drawn again
with the same randomness, sites upstream keep their draws); elements in plates are handled in
parallel, under the same plate conditions as :class:`~vigrad.Enumerate`.

Unlike :class:`~vigrad.Score` the estimator needs no baseline, and unlike
:class:`~vigrad.Enumerate` the log weight keeps its sampled value. It serves objectives linear in the
particles' log weights (the ELBO); elsewhere the transformation refuses it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax

from vigrad.estimators.base import Estimator
from vigrad.estimators.enum import require_finite_support


@dataclasses.dataclass(frozen=True)
class MVD(Estimator):
    """Measure-valued derivative of a finite-support site (Bernoulli, Categorical, ...).

    Cost: one evaluation of the particle per support value of each such site.
    """

    is_measure_valued: ClassVar[bool] = True

    def check(self, site_name: str, fn: Any) -> None:
        require_finite_support(self, site_name, fn)

    def sample(self, fn: Any, rng_key: jax.Array, sample_shape: tuple[int, ...]) -> jax.Array:
        return jax.lax.stop_gradient(fn.sample(rng_key, sample_shape))
