"""R2-G2: Rao-Blackwellised reparameterisation gradients (Lam, Bui, Deligiannidis & Teh, NeurIPS 2025).

A mean-field Gaussian site ``v = mu + sigma * eps`` that the loss sees only through a linear map
``z = W v`` carries more noise in its reparameterisation gradient than the loss needs: given ``z``,
``eps`` is still Gaussian, with mean

    eps* = A^T (A A^T)^+ A eps,        A = W diag(sigma),

the projection of ``eps`` onto the row space of ``A``. R2-G2 replaces the reparameterisation gradient
by its conditional expectation given ``z``: the forward value is unchanged, and the gradient is that of

    z* = W (mu + sigma * stop(eps*)),      output = stop(z - z*) + z*.

By the tower rule it is unbiased, and by the law of total variance its variance is never higher. For a
mean-field Bayesian dense layer whose pre-activations are sampled per example it equals the local
reparameterisation trick (Kingma, Salimans & Welling 2015) exactly; for convolutions, and for the
linear layer after a VAE's reparameterised latent, the local trick does not apply and R2-G2 still does.

``eps*`` comes from conjugate gradients on ``(A A^T) beta = A eps`` with matrix-vector products only
(``A A^T`` is never formed), at most ``rank(A)`` iterations, on stopped inputs: no gradient flows
through the solver. With weight noise drawn per example, no solver runs: a dense map's systems have
rank one and a closed form (the local reparameterisation trick), and a convolution's are small
dense systems on each example's patch matrix, solved directly (:func:`direct_projected_noise`).

The estimators here only draw the site and record its noise; the map that consumes the site is
declared in the model with :mod:`vigrad.nn` (``vigrad.nn.linear``, ``vigrad.nn.conv2d``,
``vigrad.nn.latent_linear``), which applies R2-G2 (or the local reparameterisation trick) when the
guide's estimator for the site asks for it, and the plain map otherwise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from vigrad.errors import EstimatorError
from vigrad.estimators.base import Draw, Estimator

stop = jax.lax.stop_gradient


class GaussianNoise(NamedTuple):
    """What a Gaussian-site estimator records on its site (``site["infer"]["vigrad_extras"]``).

    The site's value is ``loc + scale * noise``; ``loc`` and ``scale`` keep their gradient paths to
    the guide parameters and have the value's full shape. ``key`` (local reparameterisation only)
    seeds the pre-activation noise that the declared map draws.
    """

    loc: jax.Array
    scale: jax.Array
    noise: jax.Array
    key: jax.Array | None = None


_NON_DIAGONAL = (
    dist.MultivariateNormal,
    dist.LowRankMultivariateNormal,
)


MAP_USES = "vigrad_map_uses"
"""Key of ``site["infer"]`` under which the model-side maps of :mod:`vigrad.nn` count how many
declared maps consumed the site in the particle being scored (the count lives on that particle's
guide trace, so nothing outlives the trace)."""


def _mean_field_base(fn: Any) -> Any:
    base = fn
    while isinstance(base, dist.Independent | dist.ExpandedDistribution):
        base = base.base_dist
    return base


def _loc_scale(fn: Any) -> tuple[jax.Array, jax.Array]:
    base = _mean_field_base(fn)
    shape = tuple(fn.batch_shape) + tuple(fn.event_shape)
    return jnp.broadcast_to(base.loc, shape), jnp.broadcast_to(base.scale, shape)


def gaussian_parts(estimator: Estimator, site_name: str, fn: Any) -> tuple[jax.Array, jax.Array]:
    """``(loc, scale)`` of a mean-field Gaussian site, each with the site's shape, or an error."""
    name = type(estimator).__name__
    base = _mean_field_base(fn)
    if isinstance(base, _NON_DIAGONAL):
        raise EstimatorError(
            f"{name}() cannot serve site '{site_name}': {type(base).__name__} has a non-diagonal "
            "covariance, and R2-G2 needs independent coordinates. Use a mean-field guide "
            "(dist.Normal(loc, scale).to_event(...)) for this site, or vigrad.Reparam()."
        )
    if type(base) is not dist.Normal:
        raise EstimatorError(
            f"{name}() cannot serve site '{site_name}': it needs a Gaussian site "
            f"(dist.Normal, possibly .expand() or .to_event()), got {type(fn).__name__}"
            f"{'' if base is fn else f' of {type(base).__name__}'}. Use vigrad.Reparam() or "
            "vigrad.PathGradient() for this site."
        )
    return _loc_scale(fn)


@dataclasses.dataclass(frozen=True)
class _GaussianSite(Estimator):
    """A mean-field Gaussian site whose linear consumer is declared in the model."""

    draws_map_noise: ClassVar[bool] = False

    def check(self, site_name: str, fn: Any) -> None:
        gaussian_parts(self, site_name, fn)

    def draw(self, fn: Any, rng_key: jax.Array, sample_shape: tuple[int, ...]) -> Draw:
        # ``check`` has accepted the site before it is drawn.
        loc, scale = _loc_scale(fn)
        shape = tuple(sample_shape) + loc.shape
        key_site, key_map = jax.random.split(rng_key)
        noise = jax.random.normal(key_site, shape, dtype=jnp.result_type(loc, scale))
        loc, scale = jnp.broadcast_to(loc, shape), jnp.broadcast_to(scale, shape)
        value = loc + scale * noise
        key = key_map if self.draws_map_noise else None
        return Draw(value, extras=GaussianNoise(loc, scale, noise, key))

    def sample(self, fn: Any, rng_key: jax.Array, sample_shape: tuple[int, ...]) -> jax.Array:
        return self.draw(fn, rng_key, sample_shape).value

    def finish(self, site: dict) -> None:
        if (site.get("infer") or {}).get(MAP_USES, 0) == 0:
            name, site_name = type(self).__name__, site["name"]
            raise EstimatorError(
                f"{name}() on site '{site_name}': the model never declared the linear map that "
                "consumes it, so there is nothing to apply it to. In the model, consume the "
                f"site with vigrad.nn.linear('{site_name}', x, w) (x @ w for a weight site), "
                "vigrad.nn.conv2d(...) or vigrad.nn.latent_linear(...) (v @ W for a latent "
                "site), or use vigrad.Reparam() for it."
            )


@dataclasses.dataclass(frozen=True)
class R2G2(_GaussianSite):
    """R2-G2 for a mean-field Gaussian site consumed by a linear map declared with :mod:`vigrad.nn`.

    The site is drawn as ``loc + scale * noise`` (a reparameterised sample, so its own ``log q`` and
    the model's prior on it keep the pathwise gradient); the declared map then carries the
    Rao-Blackwellised gradient. Unbiased; the map's term of the gradient never has higher
    variance than under :class:`~vigrad.Reparam` (law of total variance). The whole gradient adds
    the site's prior and guide terms, so its variance usually, but not provably, drops too.

    Args:
        maxiter: cap on the solver's iterations. For conjugate gradients (maps with one weight
            draw per minibatch, and latents), ``None`` uses the bound ``rank(A)`` can reach (the
            size of one system), at which CG has converged in exact arithmetic. For the direct
            solve of per-example convolutions, the number of iterated-Tikhonov steps
            (``None``: 8; see :func:`direct_projected_noise`).
        tol: for CG, the relative residual at which it stops (per system, ``|r| <= tol |b|``);
            ``None`` picks ``1e-6`` in float32 and ``1e-10`` in float64. For the direct solve,
            the relative ridge ``delta / trace(A A^T)`` (``None``: ``max(p, k)`` machine epsilons).
        per_example: for weight sites (dense and convolutional maps), draw the weight noise of the
            map afresh for each example (row of the inputs), as the local reparameterisation trick
            does, and condition on each example's pre-activations. The site's own draw still
            serves its prior and guide densities. Unbiased because each example's likelihood term
            depends on the weights' marginal only; this is where R2-G2 equals the local trick on
            dense layers and beats plain reparameterisation most, since one example's outputs see
            fewer directions of the weights than a whole batch's. Dense maps then take the closed
            form (each example's system has rank one; see
            :func:`vigrad.nn.local_reparam_linear`), with no per-example weights and no solve;
            convolutions project each example's kernel noise directly on its patch matrix
            (:func:`direct_projected_noise`), with no per-example convolution and no CG.
    """

    maxiter: int | None = None
    tol: float | None = None
    per_example: bool = False

    @property
    def draws_map_noise(self) -> bool:  # type: ignore[override]
        return self.per_example


@dataclasses.dataclass(frozen=True)
class LocalReparam(_GaussianSite):
    """The local reparameterisation trick (Kingma, Salimans & Welling 2015) for a dense weight site.

    For ``z = x @ W`` with mean-field Gaussian ``W`` the pre-activations are Gaussian,
    ``z ~ N(x @ loc, x^2 @ scale^2)``; :func:`vigrad.nn.linear` samples them directly, independently
    per example (row of ``x``), with noise seeded by the site's own key. Only dense maps qualify:
    for convolutions the pre-activations of neighbouring positions share weights and are not
    independent, so :func:`vigrad.nn.conv2d` refuses it (use :class:`R2G2` there).
    """

    draws_map_noise: ClassVar[bool] = True


# ---------------------------------------------------------------------------------------------
# Matrix-free conjugate gradients and the R2-G2 map.


class CGResult(NamedTuple):
    """Solution, iterations taken and final relative residual (largest over systems)."""

    x: jax.Array
    iterations: jax.Array
    residual: jax.Array


def conjugate_gradients(
    matvec: Callable[[jax.Array], jax.Array],
    b: jax.Array,
    reduce_axes: Sequence[int],
    tol: float,
    maxiter: int,
) -> CGResult:
    """Solve ``M x = b`` for a positive semi-definite ``M`` given only ``matvec``, from ``x = 0``.

    Many independent systems are solved at once: inner products sum over ``reduce_axes`` only, so
    every index of the other axes is its own system with its own step sizes. On a consistent
    singular system CG from zero stays in the range of ``M`` and reaches a solution in at most
    ``rank(M)`` iterations (in exact arithmetic). Stops when every system's residual is below
    ``tol`` times its right-hand side, or after ``maxiter`` iterations. Not differentiable: callers
    stop gradients at its inputs.
    """
    axes = tuple(reduce_axes)
    dot = lambda u, v: jnp.sum(u * v, axis=axes, keepdims=True)
    b_norm2 = dot(b, b)
    threshold = (tol**2) * b_norm2
    tiny = jnp.finfo(b.dtype).tiny

    def cond(state):
        _, _, _, rr, k = state
        return (k < maxiter) & jnp.any(rr > threshold)

    def body(state):
        x, r, p, rr, k = state
        mp = matvec(p)
        pmp = dot(p, mp)
        active = (rr > threshold) & (pmp > tiny)
        alpha = jnp.where(active, rr / jnp.where(active, pmp, 1.0), 0.0)
        x = x + alpha * p
        r = r - alpha * mp
        rr_new = dot(r, r)
        beta = jnp.where(active, rr_new / jnp.where(active, rr, 1.0), 0.0)
        p = jnp.where(active, r + beta * p, p)
        rr = jnp.where(active, rr_new, rr)
        return x, r, p, rr, k + 1

    init = (jnp.zeros_like(b), b, b, b_norm2, jnp.zeros((), jnp.int32))
    x, _, _, rr, k = jax.lax.while_loop(cond, body, init)
    rel = jnp.sqrt(rr / jnp.where(b_norm2 > 0, b_norm2, 1.0))
    return CGResult(x, k, jnp.max(rel))


def default_tol(dtype: Any) -> float:
    return 1e-10 if jnp.dtype(dtype) == jnp.float64 else 1e-6


def projected_noise(
    apply: Callable[[jax.Array], jax.Array],
    scale: jax.Array,
    noise: jax.Array,
    reduce_axes: Sequence[int],
    tol: float | None = None,
    maxiter: int | None = None,
) -> tuple[jax.Array, CGResult]:
    """``eps* = A^T (A A^T)^+ A eps`` for ``A u = apply(scale * u)``, with gradients stopped.

    ``apply`` is the linear map (closing over its stopped coefficients); ``reduce_axes`` are the
    axes of its output along which one system extends (the others index independent systems).
    """
    scale, noise = stop(scale), stop(noise)
    a = lambda u: apply(scale * u)
    rhs = a(noise)
    transpose = jax.linear_transpose(a, noise)
    a_t = lambda beta: transpose(beta)[0]
    tol = default_tol(rhs.dtype) if tol is None else tol
    if maxiter is None:
        # rank(A) is at most the size of one system on either side of the map.
        out_size = 1
        for ax in reduce_axes:
            out_size *= rhs.shape[ax]
        num_systems = rhs.size // max(out_size, 1)
        maxiter = max(1, min(out_size, noise.size // max(num_systems, 1)))
    result = conjugate_gradients(lambda beta: a(a_t(beta)), rhs, reduce_axes, tol, maxiter)
    return stop(a_t(result.x)), result


def r2g2_map(
    apply: Callable[[jax.Array, jax.Array], jax.Array],
    coefficients: jax.Array,
    parts: GaussianNoise,
    reduce_axes: Sequence[int],
    tol: float | None = None,
    maxiter: int | None = None,
) -> jax.Array:
    """The R2-G2 output of a linear map of a Gaussian site: value ``apply(c, v)``, R2-G2 gradient.

    ``apply(c, u)`` is linear in ``u`` (the site's value) and may depend on ``c`` (inputs or weights,
    which keep their gradient); ``v = loc + scale * noise``.
    """
    loc, scale, noise = parts.loc, parts.scale, parts.noise
    fixed = stop(coefficients)
    eps_star, _ = projected_noise(
        lambda u: apply(fixed, u), scale, noise, reduce_axes, tol=tol, maxiter=maxiter
    )
    z = apply(coefficients, loc + scale * noise)
    z_star = apply(coefficients, loc + scale * eps_star)
    return stop(z - z_star) + z_star


def direct_projected_noise(
    rows: jax.Array,
    scale: jax.Array,
    noise: jax.Array,
    tol: float | None = None,
    maxiter: int | None = None,
) -> jax.Array:
    """``eps*`` for many small dense maps ``A_bo = rows_b diag(scale[:, o])``, by direct solves.

    ``rows`` is ``[b, p, k]`` (e.g. each example's patch matrix), ``scale`` ``[k, o]`` and
    ``noise`` ``[b, k, o]``; system ``(b, o)`` projects ``noise[b, :, o]`` onto the row space of
    ``A_bo``, as ``eps* = A^T beta`` with ``(A A^T) beta = A eps``.

    * ``p >= k`` (more positions than kernel entries, e.g. a first convolution): when every
      ``rows_b`` has full column rank, the row space is all of ``R^k`` and ``eps* = eps``, found
      from one Cholesky factorisation of each ``rows_b^T rows_b`` (pivots above ``100 tol`` times
      its trace); otherwise the rows are replaced by the ``R`` factor of their QR decomposition,
      ``[k, k]`` with the same row space, and solved as below. (Taking ``eps* = eps`` for a
      nearly singular ``rows_b`` would project onto a larger space than the row space: still
      unbiased, with less variance removed.)
    * Each system then has size ``n = min(p, k)``. Its ``n x n`` matrix ``M = A A^T`` is formed
      and factorised once with a ridge, ``M + delta I``, ``delta = tol * trace(M)`` (``tol``
      defaults to ``max(p, k)`` machine epsilons, enough to keep the Cholesky factorisation of a
      singular ``M`` positive in floating point); ``maxiter`` (default 8) steps of iterated
      Tikhonov regularisation from ``beta = 0``,
      ``beta <- beta + (M + delta I)^{-1} (A eps - M beta)``, then remove the ridge's bias: after
      ``j`` steps a direction of ``A``'s row space with squared singular value ``lambda`` keeps a
      relative error ``(delta / (lambda + delta))^j``. Whatever the solve leaves along the null
      space of ``A^T`` is annihilated by ``A^T``, so ``eps*`` has no component in the null space
      of ``A`` beyond rounding.

    Costs ``O(b o n^2 (k + n))``; for the small systems of a per-example convolution this is
    cheaper than conjugate gradients (a loop step per iteration) and more accurate in float32.
    Gradients are stopped.
    """
    rows, scale, noise = stop(rows), stop(scale), stop(noise)
    _, p, k = rows.shape
    tol = max(p, k) * float(jnp.finfo(rows.dtype).eps) if tol is None else tol
    maxiter = 8 if maxiter is None else maxiter
    if p < k:
        return _ridge_projection(rows, scale, noise, tol, maxiter)
    cross = jnp.einsum("bpk,bpl->bkl", rows, rows)
    pivots = jnp.diagonal(jnp.linalg.cholesky(cross), axis1=-2, axis2=-1) ** 2
    trace = jnp.trace(cross, axis1=-2, axis2=-1)
    # A failed factorisation gives NaN pivots, which compare False.
    full_rank = jnp.all(pivots > 100 * tol * trace[:, None])
    return jax.lax.cond(
        full_rank,
        lambda: noise,
        lambda: _ridge_projection(jnp.linalg.qr(rows, mode="r"), scale, noise, tol, maxiter),
    )


def _ridge_projection(rows, scale, noise, tol, maxiter):
    n = rows.shape[1]
    gram = jnp.einsum("bopk,bqk->bopq", rows[:, None] * (scale.T**2)[None, :, None], rows)
    rhs = jnp.einsum("bpk,bko->bop", rows, scale * noise)
    delta = tol * jnp.trace(gram, axis1=-2, axis2=-1) + jnp.finfo(gram.dtype).tiny
    eye = jnp.eye(n, dtype=gram.dtype)
    factor = jnp.linalg.cholesky(gram + delta[..., None, None] * eye)
    inverse = jax.scipy.linalg.cho_solve((factor, True), jnp.broadcast_to(eye, gram.shape))
    times = lambda m, v: jnp.einsum("boij,boj->boi", m, v)
    beta = jnp.zeros_like(rhs)
    for _ in range(maxiter):
        beta = beta + times(inverse, rhs - times(gram, beta))
    return scale * jnp.einsum("bpk,bop->bko", rows, beta)
