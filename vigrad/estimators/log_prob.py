"""Log densities with correct gradients where NumPyro's formula has a kink at the origin.

NumPyro writes the log-likelihood of logit-parameterised binary counts as a binary cross-entropy
``max(a, 0) - a y + log(1 + exp(-|a|))``, whose value is right everywhere but whose gradient at
exactly ``a = 0`` is ``1 - y`` or ``-y`` instead of ``1/2 - y`` (``max`` and ``|.|`` are not
differentiable there, and JAX picks one side). Guides are commonly initialised at zero logits, so a
score-function or enumerated term would start from a wrong gradient. The same log density written
with ``softplus``, ``y a - n softplus(a)`` plus the binomial coefficient, is smooth everywhere.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.scipy.special import gammaln
from numpyro.distributions import BernoulliLogits, BinomialLogits
from numpyro.distributions.util import promote_shapes


def log_prob(fn: Any, value: jax.Array) -> jax.Array:
    """``fn.log_prob(value)``, with the smooth formula for logit-parameterised binary counts."""
    if type(fn) is BernoulliLogits:
        logits, value = promote_shapes(fn.logits, value)
        return value * logits - jax.nn.softplus(logits)
    if type(fn) is BinomialLogits:
        logits, n, value = promote_shapes(fn.logits, fn.total_count, value)
        coefficient = gammaln(n + 1.0) - gammaln(value + 1.0) - gammaln(n - value + 1.0)
        return coefficient + value * logits - n * jax.nn.softplus(logits)
    return fn.log_prob(value)
