"""Kernel Stein discrepancy with the inverse multiquadric kernel (Gorham & Mackey, ICML 2017).

For draws x_1..x_m and the target's score s(x) = ∇ log p(x | data),

    KSD² = (1/m²) Σ_ij k₀(x_i, x_j),
    k₀(x, y) = s(x)·s(y) k + (s(y) − s(x))·r 2β u^(β−1) − 2βd u^(β−1) − 4β(β−1) |r|² u^(β−2),

with r = x − y, u = c² + |r|² and the IMQ kernel k = u^β, β = −1/2, c = 1. KSD is zero only when
the draws' law is the target and, with the IMQ kernel, goes to zero exactly when the draws converge
to it (Gorham & Mackey 2017, Theorem 8). It needs only the score, not the normalising constant, and
it penalises both draws that have not reached the posterior and draws that spread too wide or too
narrow: what a step size trades off. Coullon, South & Nemeth (2023, "Efficient and generalizable
tuning strategies for stochastic gradient MCMC", Stat. Comput.) choose SG-MCMC step sizes by it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def imq_ksd(x: jax.Array, score: jax.Array, c: float = 1.0, beta: float = -0.5) -> jax.Array:
    """The IMQ kernel Stein discrepancy (V-statistic, square root taken) of draws ``x`` ``[m, d]``
    with scores ``score`` ``[m, d]``; ``inf`` if any draw or score is not finite."""
    d = x.shape[-1]
    # Pairwise terms from inner products: no [m, m, d] array, so memory is O(m² + m d).
    gram = x @ x.T
    sq = jnp.diag(gram)
    r2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)
    u = c * c + r2
    s_dot = score @ score.T
    s_x = score @ x.T  # s(x_i)·x_j
    s_r = jnp.diag(s_x)[:, None] - s_x  # s(x_i)·(x_i − x_j)
    cross = 2.0 * beta * u ** (beta - 1.0) * (-s_r.T - s_r)  # (s(y) − s(x))·r with r = x_i − x_j
    trace = -2.0 * beta * d * u ** (beta - 1.0) - 4.0 * beta * (beta - 1.0) * r2 * u ** (beta - 2.0)
    k0 = s_dot * u**beta + cross + trace
    value = jnp.sqrt(jnp.maximum(jnp.mean(k0), 0.0))
    finite = jnp.all(jnp.isfinite(x)) & jnp.all(jnp.isfinite(score))
    return jnp.where(finite, value, jnp.inf)
