"""Stochastic-gradient MCMC kernels: SGLD, pSGLD, SGHMC, SGLD-CV and preconditioned SGLD-CV.

Each kernel is a pure ``(init, step)`` pair over a ``NamedTuple`` state, as in BlackJAX:
``state = kernel.init(position)`` and ``state = kernel.step(rng_key, state, grad_fn, step_size)``,
where ``grad_fn(position)`` returns a stochastic estimate of ∇ log p(θ | data) and ``position`` is
any pytree. Nothing is jitted here; the driver (:func:`vigrad.sgmcmc.sample`) jits and scans.

Step-size convention (Welling & Teh 2011): θ ← θ + (ε/2) ĝ(θ) + N(0, ε I). BlackJAX writes the same
update with h = ε/2 and noise N(0, 2h); ``SGLD(step_size=ε)`` here equals BlackJAX's
``sgld(step_size=ε/2)``.

A kernel also says how its gradient is estimated (``prepare`` once, then ``gradient`` per step), so
SGLD-CV and the federated kernels change the estimator and keep the SGLD update.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from vigrad.sgmcmc.minibatch import Position, Target, minibatch_indices

StepSize = float | Callable[[jax.Array], jax.Array]
GradFn = Callable[[Any], Any]


def _normal_like(rng_key: jax.Array, tree: Any) -> Any:
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(rng_key, len(leaves))
    noise = [
        jax.random.normal(k, jnp.shape(x), jnp.result_type(x))
        for k, x in zip(keys, leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, noise)


def polynomial_decay(a: float, b: float = 1.0, gamma: float = 0.55) -> Callable:
    """Step-size schedule ε_t = a (b + t)^(-γ) (Welling & Teh 2011; γ ∈ (0.5, 1])."""

    def schedule(t: jax.Array) -> jax.Array:
        return a * (b + t) ** (-gamma)

    return schedule


@dataclasses.dataclass(frozen=True)
class Kernel:
    """Base class: the step-size schedule and the plain minibatch gradient estimator."""

    step_size: StepSize

    def step_size_at(self, t: jax.Array) -> jax.Array:
        if callable(self.step_size):
            return jnp.asarray(self.step_size(t))
        return jnp.asarray(self.step_size)

    def init(self, position: Any) -> NamedTuple:
        raise NotImplementedError

    def step(self, rng_key: jax.Array, state: Any, grad_fn: GradFn, step_size: jax.Array) -> Any:
        raise NotImplementedError

    def prepare(
        self,
        target: Target,
        batch_size: int,
        rng_key: jax.Array,
        position: Position,
        args: tuple,
        kwargs: dict,
    ) -> Any:
        """Quantities computed once before sampling (a centring mode, shard approximations)."""
        return ()

    def start(self, aux: Any) -> Position | None:
        """Where every chain starts, if the kernel has a preferred point (else ``None``)."""
        return None

    def gradient(
        self,
        target: Target,
        aux: Any,
        position: Position,
        t: jax.Array,
        rng_key: jax.Array,
        chain_key: jax.Array,
        batch_size: int,
        args: tuple,
        kwargs: dict,
    ) -> Position:
        """ĝ(θ) = ∇ log p(θ) + (N/n) Σ_{i∈B} ∇ log p(x_i|θ), B uniform with replacement."""
        idx = minibatch_indices(rng_key, target.num_data, batch_size)
        return target.grad(position, idx, args, kwargs)


class SGLDState(NamedTuple):
    position: Any


@dataclasses.dataclass(frozen=True)
class SGLD(Kernel):
    """Stochastic-gradient Langevin dynamics (Welling & Teh, ICML 2011).

    θ ← θ + (ε/2) ĝ(θ) + N(0, ε I). Samples the posterior up to an O(ε) bias from the
    discretisation and the gradient noise.
    """

    def init(self, position: Any) -> SGLDState:
        return SGLDState(position)

    def step(self, rng_key, state: SGLDState, grad_fn: GradFn, step_size) -> SGLDState:
        g = grad_fn(state.position)
        noise = _normal_like(rng_key, state.position)
        position = jax.tree.map(
            lambda x, gi, z: x + 0.5 * step_size * gi + jnp.sqrt(step_size) * z,
            state.position,
            g,
            noise,
        )
        return SGLDState(position)


class PSGLDState(NamedTuple):
    position: Any
    square_avg: Any


@dataclasses.dataclass(frozen=True)
class pSGLD(Kernel):
    """Preconditioned SGLD with an RMSprop preconditioner (Li, Chen, Carlson, Carin, AAAI 2016).

    V ← α V + (1 − α) ĝ⊙ĝ, G = 1 / (λ + √V), θ ← θ + (ε/2) G ĝ + N(0, ε G). The Γ(θ) correction
    term is dropped, as in the paper's experiments; its effect vanishes as V settles.
    """

    alpha: float = 0.99
    eps: float = 1e-5

    def init(self, position: Any) -> PSGLDState:
        return PSGLDState(position, jax.tree.map(jnp.zeros_like, position))

    def step(self, rng_key, state: PSGLDState, grad_fn: GradFn, step_size) -> PSGLDState:
        g = grad_fn(state.position)
        v = jax.tree.map(
            lambda v, gi: self.alpha * v + (1.0 - self.alpha) * gi * gi, state.square_avg, g
        )
        noise = _normal_like(rng_key, state.position)

        def update(x, gi, vi, z):
            precond = 1.0 / (self.eps + jnp.sqrt(vi))
            return x + 0.5 * step_size * precond * gi + jnp.sqrt(step_size * precond) * z

        position = jax.tree.map(update, state.position, g, v, noise)
        return PSGLDState(position, v)


class SGHMCState(NamedTuple):
    position: Any
    momentum: Any


@dataclasses.dataclass(frozen=True)
class SGHMC(Kernel):
    """Stochastic-gradient HMC with friction (Chen, Fox, Guestrin, ICML 2014), unit mass.

    r ← r + ε ĝ(θ) − ε C r + N(0, 2 (C − B̂) ε), θ ← θ + ε r. ``friction`` is C and
    ``noise_estimate`` is B̂ (0 by default); the momentum is kept between steps and starts at 0.
    """

    friction: float = 1.0
    noise_estimate: float = 0.0

    def init(self, position: Any) -> SGHMCState:
        return SGHMCState(position, jax.tree.map(jnp.zeros_like, position))

    def step(self, rng_key, state: SGHMCState, grad_fn: GradFn, step_size) -> SGHMCState:
        g = grad_fn(state.position)
        noise = _normal_like(rng_key, state.position)
        scale = jnp.sqrt(2.0 * (self.friction - self.noise_estimate) * step_size)
        momentum = jax.tree.map(
            lambda r, gi, z: r + step_size * gi - step_size * self.friction * r + scale * z,
            state.momentum,
            g,
            noise,
        )
        position = jax.tree.map(lambda x, r: x + step_size * r, state.position, momentum)
        return SGHMCState(position, momentum)


class Centre(NamedTuple):
    position: Any
    full_grad: Any


@dataclasses.dataclass(frozen=True)
class SGLDCV(SGLD):
    """SGLD with control variates (Baker, Fearnhead, Fox, Nemeth, Stat. Comput. 2019).

    ĝ(θ) = ∇ log p(θ) + ∇ log p(x|θ̂) + (N/n) Σ_{i∈B} [∇ log p(x_i|θ) − ∇ log p(x_i|θ̂)], with θ̂ a
    mode found once by Adam on minibatch gradients (``mode_steps`` steps, cosine-decayed
    ``mode_learning_rate``), or given as ``centre`` (constrained values). The estimate is
    unbiased for any θ̂; its variance is small when θ̂ is near the mode. Chains start at θ̂.
    """

    centre: dict | None = dataclasses.field(default=None, hash=False, compare=False)
    mode_steps: int = 2000
    mode_learning_rate: float = 1e-2

    def prepare(self, target, batch_size, rng_key, position, args, kwargs) -> Centre:
        if self.centre is not None:
            theta = target.unconstrain(self.centre)
        else:
            theta = _find_mode(
                target,
                batch_size,
                rng_key,
                position,
                args,
                kwargs,
                self.mode_steps,
                self.mode_learning_rate,
            )
        all_idx = jnp.arange(target.num_data)
        full = jax.jit(lambda u, a, k: target.grad(u, all_idx, a, k, prior_weight=0.0))
        return Centre(theta, full(theta, args, kwargs))

    def start(self, aux: Centre) -> Position:
        return aux.position

    def gradient(
        self, target, aux: Centre, position, t, rng_key, chain_key, batch_size, args, kwargs
    ):
        idx = minibatch_indices(rng_key, target.num_data, batch_size)
        g = target.grad(position, idx, args, kwargs)
        g_hat = target.grad(aux.position, idx, args, kwargs, prior_weight=0.0)
        return jax.tree.map(lambda a, b, c: a - b + c, g, g_hat, aux.full_grad)


class PreconditionedGradient(NamedTuple):
    """What :class:`PreconditionedSGLDCV`'s gradient hands its step: M ĝ (flat) and a square root
    S of M (S Sᵀ = M). The gradient carries the metric so the driver's ``step(key, state, grad_fn,
    ε)`` contract is unchanged."""

    scaled: jax.Array
    scale_tril: jax.Array


class CentreAndMetric(NamedTuple):
    position: Any
    full_grad: Any
    scale_tril: jax.Array


@dataclasses.dataclass(frozen=True)
class PreconditionedSGLDCV(SGLDCV):
    """SGLD-CV with a constant preconditioner from the Laplace approximation at the centre.

    M = H⁻¹, H = −∇² log p(θ̂ | x) on all the data at the centre θ̂ (unconstrained, flattened), and
    θ ← θ + (ε/2) M ĝ(θ) + N(0, ε M): Langevin dynamics with a constant metric, which leaves the
    posterior invariant for any positive-definite M (Girolami & Calderhead 2011, with a position-
    independent metric; Ahn, Korattikara & Welling 2012 precondition SGLD by the Fisher
    information in the same way). With M the posterior covariance near the mode, every direction
    moves at the same rate, so a strongly correlated posterior mixes as fast as an isotropic one
    and ε is of order 0.1 to 1 whatever the data size. H's eigenvalues are floored at ``jitter``
    times the largest, so that M exists when H is singular or indefinite (a non-convex posterior). The Hessian costs d gradient
    evaluations on all the data once; use it for up to a few thousand latent dimensions.
    """

    jitter: float = 1e-6

    def prepare(self, target, batch_size, rng_key, position, args, kwargs) -> CentreAndMetric:
        centre = super().prepare(target, batch_size, rng_key, position, args, kwargs)
        flat, unravel = ravel_pytree(centre.position)
        all_idx = jnp.arange(target.num_data)

        def neg_log_post(x):
            prior, lik = target.log_density(unravel(x), all_idx, args, kwargs)
            return -(prior + lik)

        h = jax.hessian(neg_log_post)(flat)
        # M = V diag(1 / λ) Vᵀ with eigenvalues floored: a mode found by stochastic optimisation
        # on a non-convex posterior can leave H singular or indefinite, and M must stay
        # positive definite. The square root V diag(λ^-1/2) serves as chol(M): N(0, M) is the same.
        lam, vec = jnp.linalg.eigh(0.5 * (h + h.T))
        lam = jnp.maximum(lam, self.jitter * jnp.max(jnp.abs(lam)))
        scale_tril = vec * lam**-0.5
        return CentreAndMetric(centre.position, centre.full_grad, scale_tril)

    def gradient(self, target, aux, position, t, rng_key, chain_key, batch_size, args, kwargs):
        g = super().gradient(target, aux, position, t, rng_key, chain_key, batch_size, args, kwargs)
        flat = ravel_pytree(g)[0]
        return PreconditionedGradient(aux.scale_tril @ (aux.scale_tril.T @ flat), aux.scale_tril)

    def step(self, rng_key, state: SGLDState, grad_fn: GradFn, step_size) -> SGLDState:
        flat, unravel = ravel_pytree(state.position)
        pg = grad_fn(state.position)
        z = jax.random.normal(rng_key, flat.shape, flat.dtype)
        moved = flat + 0.5 * step_size * pg.scaled + jnp.sqrt(step_size) * (pg.scale_tril @ z)
        return SGLDState(unravel(moved))


def _find_mode(target, batch_size, rng_key, position, args, kwargs, steps, lr) -> Position:
    optimizer = optax.adam(optax.cosine_decay_schedule(lr, steps))

    def neg_grad(u, key):
        idx = minibatch_indices(key, target.num_data, batch_size)
        return jax.tree.map(jnp.negative, target.grad(u, idx, args, kwargs))

    @jax.jit
    def run(u, key):
        def body(carry, k):
            u, opt = carry
            updates, opt = optimizer.update(neg_grad(u, k), opt, u)
            return (optax.apply_updates(u, updates), opt), None

        (u, _), _ = jax.lax.scan(body, (u, optimizer.init(u)), jax.random.split(key, steps))
        return u

    return run(position, rng_key)
