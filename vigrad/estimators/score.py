"""Score-function (REINFORCE) gradients with Rao-Blackwellisation.

``grad_phi E_q[f(z, phi)] = E_q[(f(z, phi) - b) grad_phi log q_phi(z) + grad_phi f(z, phi)]`` for any
baseline ``b`` independent of ``z`` (Williams 1992). The sample is drawn with its gradient stopped;
the objective transformation multiplies the site's ``log q`` by a stopped learning signal. For the
ELBO the signal of a site is only the cost downstream of it (Schulman et al. 2015, "Gradient
Estimation Using Stochastic Computation Graphs"), found by provenance tracking.

``Score`` works on any distribution, discrete or continuous, and can be forced on a site that could
be reparameterised.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from vigrad.estimators.base import Estimator


@dataclasses.dataclass(frozen=True)
class Score(Estimator):
    """REINFORCE with an optional control variate (a baseline subtracted from the signal).

    Args:
        control_variate: a :class:`~vigrad.estimators.control_variates.ControlVariate`; ``None``
            picks :func:`~vigrad.LeaveOneOut` when the objective draws more than one particle and
            no baseline otherwise.
    """

    control_variate: Any = None
    is_score = True

    def sample(self, fn: Any, rng_key: jax.Array, sample_shape: tuple[int, ...]) -> jax.Array:
        return jax.lax.stop_gradient(fn.sample(rng_key, sample_shape))
