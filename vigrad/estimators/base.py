"""The per-site estimator interface.

An estimator says two things about one guide sample site, and nothing about objectives:

* how the site's value is drawn, which fixes the path along which gradients flow through the
  value (``sample``);
* which ``log q`` term the site contributes to the log weight ``log w = log p - log q``, which fixes
  the gradient that flows through the guide density (``log_q``).

Estimators whose gradient needs a score-function term (REINFORCE) set ``is_score``; the objective
transformation (:mod:`vigrad.objectives.surrogate`) then adds ``log q(z) * stop(signal)`` for the site.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax

from vigrad.errors import EstimatorError
from vigrad.estimators.log_prob import log_prob


class Draw(NamedTuple):
    """What an estimator's :meth:`Estimator.draw` returns for one site.

    Attributes:
        value: the sample, with the estimator's gradient path.
        log_q: the site's ``log q`` term if the estimator computes it while sampling (as the fast
            flow path gradient does), else ``None`` to have :meth:`Estimator.log_q` called.
        extras: anything the estimator wants recorded on the site (in
            ``site["infer"]["vigrad_extras"]``), e.g. the noise of a Gaussian sample for R2-G2.
    """

    value: jax.Array
    log_q: jax.Array | None = None
    extras: Any = None


@dataclasses.dataclass(frozen=True)
class Estimator:
    """Base class of per-site gradient estimators (immutable and hashable)."""

    is_score: ClassVar[bool] = False

    def check(self, site_name: str, fn: Any) -> None:
        """Raise :class:`~vigrad.errors.EstimatorError` if this estimator cannot serve the site."""

    def sample(self, fn: Any, rng_key: jax.Array, sample_shape: tuple[int, ...]) -> jax.Array:
        """Draw the site's value; its gradient path is the estimator's choice."""
        raise NotImplementedError

    def draw(self, fn: Any, rng_key: jax.Array, sample_shape: tuple[int, ...]) -> Draw:
        """Sample the site; override to also return its ``log q`` term or extras."""
        return Draw(self.sample(fn, rng_key, sample_shape))

    def log_q(self, fn: Any, value: jax.Array) -> jax.Array:
        """The ``log q`` term of the site, differentiable along the estimator's chosen path."""
        return log_prob(fn, value)

    def finish(self, site: dict) -> None:
        """Raise :class:`~vigrad.errors.EstimatorError` if the particle did not use the site as
        this estimator needs; called with the guide's site record once the model has run on it.

        The record's ``infer`` dict carries what the draw recorded (``vigrad_estimator``,
        ``vigrad_extras``) and what model-side helpers added while the model ran, so an
        estimator's book-keeping lives on the trace it serves and ends with it.
        """


def require_rsample(estimator: Estimator, site_name: str, fn: Any) -> None:
    """Shared check for pathwise estimators: the distribution must be reparameterisable."""
    if not getattr(fn, "has_rsample", False):
        raise EstimatorError(
            f"{type(estimator).__name__}() cannot serve site '{site_name}': "
            f"{type(fn).__name__} has no reparameterised sampler (has_rsample=False). "
            "Use vigrad.Score() for this site instead."
        )
