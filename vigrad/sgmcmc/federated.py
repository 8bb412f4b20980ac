"""Federated SG-MCMC: DSGLD and FSGLD over a data set split into shards (clients).

A round picks shard s with probability f_s and runs ``local_steps`` (T) SGLD steps on minibatches
of that shard only.

- DSGLD (Ahn, Shahbaba, Welling, ICML 2014): ĝ = ∇ log p(θ) + (N_s / (f_s n)) Σ_{i∈B⊂s} ∇ log p(x_i|θ).
  Unbiased over the shard choice, but with non-IID shards and T > 1 the chain spends T steps
  following one shard's posterior and drifts.
- FSGLD (El Mekkaoui, Mesquita, Blomstedt, Kaski, UAI 2021): adds the conducive gradient
  g_cg,s(θ) = Σ_k ∇ log q_k(θ) − (1/f_s) ∇ log q_s(θ), with q_k a Gaussian approximation of shard
  k's likelihood fitted once. Σ_s f_s g_cg,s = 0 for any q_k, so the estimate stays unbiased; a good
  q_k makes each local step follow the full posterior and removes the drift.

Shard layouts (``shards=``): an int K (contiguous, near-equal split of the plate's N points), an
integer array of N shard labels in 0..K-1, or a sequence of K disjoint index arrays covering 0..N-1.

Composition: :class:`Shards` is DSGLD's gradient estimator, :class:`Conducive` wraps it and adds
the conducive gradient; both run under the SGLD update rule (:mod:`vigrad.sgmcmc.sgld`). The layout
and the approximations are data: computed once by ``prepare`` and passed to the compiled loop as
arrays, so another label array of the same shapes reuses the compilation.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from vigrad.errors import DataError
from vigrad.sgmcmc.kernel import data_field
from vigrad.sgmcmc.minibatch import Position, Problem


class ShardLayout(NamedTuple):
    """Shard k holds ``table[k, :sizes[k]]`` (rows padded with the shard's first index); ``probs``
    are the f_s."""

    table: jax.Array
    sizes: jax.Array
    probs: jax.Array


def shard_layout(shards: Any, num_data: int, probs: Any = None) -> ShardLayout:
    """Check a shard specification against a plate of ``num_data`` points and tabulate it."""
    if isinstance(shards, (int, np.integer)) and not isinstance(shards, bool):
        if not 1 <= shards <= num_data:
            raise DataError(
                f"unknown shard layout: shards={shards} must be between 1 and the data size "
                f"{num_data}"
            )
        groups = np.array_split(np.arange(num_data), int(shards))
    elif isinstance(shards, (np.ndarray, jax.Array)) and np.ndim(shards) == 1:
        labels = np.asarray(shards)
        if labels.shape[0] != num_data or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(
                f"unknown shard layout: a label array must hold {num_data} integers (one per data "
                f"point), got shape {labels.shape} and dtype {labels.dtype}"
            )
        k = int(labels.max()) + 1
        groups = [np.flatnonzero(labels == s) for s in range(k)]
        if labels.min() < 0 or any(len(g) == 0 for g in groups):
            raise DataError(
                "unknown shard layout: labels must be 0..K-1 with every shard non-empty"
            )
    elif isinstance(shards, Sequence) and shards and all(np.ndim(g) == 1 for g in shards):
        groups = [np.asarray(g) for g in shards]
        flat = np.concatenate(groups)
        if (
            not np.issubdtype(flat.dtype, np.integer)
            or any(len(g) == 0 for g in groups)
            or not np.array_equal(np.sort(flat), np.arange(num_data))
        ):
            raise DataError(
                "unknown shard layout: index arrays must be non-empty, disjoint and cover "
                f"0..{num_data - 1} exactly once"
            )
    else:
        raise DataError(
            f"unknown shard layout {type(shards).__name__}: pass an int K, an array of "
            f"{num_data} shard labels, or a list of index arrays"
        )
    sizes = np.array([len(g) for g in groups])
    table = np.zeros((len(groups), sizes.max()), np.int32)
    for s, g in enumerate(groups):
        table[s] = g[0]
        table[s, : len(g)] = g
    if probs is None:
        f = sizes / num_data
    else:
        f = np.asarray(probs, float)
        if f.shape != sizes.shape or np.any(f <= 0) or not np.isclose(f.sum(), 1.0):
            raise DataError(
                f"shard probabilities must be {len(groups)} positive numbers summing to 1, "
                f"got {probs}"
            )
    return ShardLayout(table, sizes, f)


def _round_shard(layout: ShardLayout, rng_key: jax.Array, t: jax.Array, local_steps: int):
    """The shard of the round holding step t: a fresh draw every ``local_steps`` steps."""
    key = jax.random.fold_in(rng_key, t // local_steps)
    return jax.random.categorical(key, jnp.log(jnp.asarray(layout.probs)))


def _shard_batch(layout: ShardLayout, s: jax.Array, rng_key: jax.Array, batch_size: int):
    # randint, not floor(uniform * size): a float32 uniform has too few values to be uniform
    # over a large shard.
    pos = jax.random.randint(rng_key, (batch_size,), 0, jnp.asarray(layout.sizes)[s])
    return jnp.asarray(layout.table)[s, pos]


class GaussianApprox(NamedTuple):
    """Gaussian q_k(θ) = N(mean_k, precision_k^-1) over the flattened unconstrained θ, per shard."""

    means: jax.Array
    precisions: jax.Array


def conducive_gradient(
    approx: GaussianApprox, probs: jax.Array, s: jax.Array, theta: jax.Array
) -> jax.Array:
    """g_cg,s(θ) = Σ_k ∇ log q_k(θ) − (1/f_s) ∇ log q_s(θ) for Gaussian q_k, θ flattened."""
    probs = jnp.asarray(probs)
    grads = -jnp.einsum("kij,kj->ki", approx.precisions, theta[None, :] - approx.means)
    return grads.sum(0) - grads[s] / probs[s]


class FederatedAux(NamedTuple):
    """What a federated kernel prepares once.

    ``clients``: when the shards are placed on devices, the per-point arguments regrouped as
    ``[K, max N_s, ...]`` and split over the ``clients`` mesh axis (else ``None``).
    """

    layout: ShardLayout
    approx: GaussianApprox | None
    clients: list | None


def _per_point(args: tuple, kwargs: dict, num_data: int) -> list[bool]:
    """Which argument leaves hold one row per data point (leading axis of length N)."""
    return [
        isinstance(x, jax.Array) and jnp.ndim(x) > 0 and x.shape[0] == num_data
        for x in jax.tree.leaves((args, kwargs))
    ]


def _with_leaves(args: tuple, kwargs: dict, mask: list[bool], replacements: list) -> tuple:
    leaves, treedef = jax.tree.flatten((args, kwargs))
    it = iter(replacements)
    return jax.tree.unflatten(
        treedef, [next(it) if m else x for x, m in zip(leaves, mask, strict=True)]
    )


def hashable_devices(devices: Any) -> int | tuple | None:
    """``devices`` as an int, a tuple or ``None``, so that a kernel's static part hashes."""
    if devices is None or isinstance(devices, int):
        return devices
    return tuple(devices)


def _mesh(devices: int | tuple) -> jax.sharding.Mesh:
    devs = jax.devices()[:devices] if isinstance(devices, int) else devices
    return jax.sharding.Mesh(np.array(list(devs)), ("clients",))


@dataclasses.dataclass(frozen=True)
class Shards:
    """DSGLD's estimator: rounds of ``local_steps`` steps on one shard picked with prob. f_s,

        ĝ = ∇ log p(θ) + (N_s / (f_s n)) Σ_{i∈B⊂s} ∇ log p(x_i|θ),

    unbiased over the shard choice (Ahn, Shahbaba & Welling, ICML 2014). ``probs`` defaults to
    f_s = N_s / N. The chain's own key fixes the shard sequence, so a run does not depend on how it
    is cut into compiled chunks.

    ``devices`` (an int or a sequence of devices) places the shards on devices with ``shard_map``:
    the per-point arguments (leading axis of length N) are regrouped by shard and split over a
    ``clients`` mesh axis, K must be a multiple of the number of devices, and the model's plate
    size must follow the data's leading axis (``numpyro.plate('data', x.shape[0])``). Each device
    evaluates only its own shards' data and the devices exchange one gradient per step (``psum``);
    the data never moves.
    """

    shards: Any = data_field(1)
    local_steps: int = 1
    probs: Any = data_field()
    devices: int | tuple | None = None

    def __post_init__(self):
        object.__setattr__(self, "devices", hashable_devices(self.devices))

    def prepare(self, problem: Problem, rng_key: jax.Array, position: Position) -> FederatedAux:
        layout = shard_layout(self.shards, problem.num_data, self.probs)
        clients = None
        if self.devices is not None:
            clients = self._place_clients(problem, layout)
        return FederatedAux(jax.tree.map(jnp.asarray, layout), None, clients)

    def start(self, aux: FederatedAux) -> None:
        return None

    def _place_clients(self, problem: Problem, layout: ShardLayout) -> list:
        mesh = _mesh(self.devices)
        num_shards, width = layout.table.shape
        if num_shards % mesh.size:
            raise DataError(
                f"unknown shard layout: {num_shards} shards cannot be spread evenly over "
                f"{mesh.size} devices; use a multiple of {mesh.size} shards"
            )
        args, kwargs = problem.arguments()
        mask = _per_point(args, kwargs, problem.num_data)
        if not any(mask):
            raise DataError(
                "unknown shard layout: no model argument has one row per data point (leading "
                f"axis of length {problem.num_data}), so there is nothing to place on clients"
            )
        leaves = [x for x, m in zip(jax.tree.leaves((args, kwargs)), mask, strict=True) if m]
        a, k = _with_leaves(args, kwargs, mask, [x[layout.table[0]] for x in leaves])
        plate = problem.target.plate_size(a, k)
        if plate != width:
            raise DataError(
                f"unknown shard layout: with one client's {width} rows the plate "
                f"'{problem.target.plate}' has size {plate}; placing shards on devices needs the "
                "plate size to follow the data, e.g. numpyro.plate('data', x.shape[0])"
            )
        spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("clients"))
        return [jax.lax.with_sharding_constraint(x[layout.table], spec) for x in leaves]

    def round_shard(self, aux: FederatedAux, t: jax.Array, chain_key: jax.Array) -> jax.Array:
        """The shard of the round holding step t (constant within a round)."""
        return _round_shard(aux.layout, chain_key, t, self.local_steps)

    def estimate(self, problem, aux: FederatedAux, position, rng_key, t, chain_key) -> Position:
        layout = aux.layout
        s = self.round_shard(aux, t, chain_key)
        if aux.clients is None:
            weight = layout.sizes[s] / (layout.probs[s] * problem.num_data)
            idx = _shard_batch(layout, s, rng_key, problem.batch_size)
            return problem.grad(position, idx, lik_weight=weight)
        return self._client_gradient(problem, aux, position, s, rng_key)

    def _client_gradient(self, problem, aux, position, s, rng_key):
        mesh = _mesh(self.devices)
        args, kwargs = problem.arguments()
        mask = _per_point(args, kwargs, problem.num_data)
        num_shards, width = aux.layout.table.shape
        per_device = num_shards // mesh.size
        P = jax.sharding.PartitionSpec
        target, batch_size = problem.target, problem.batch_size

        def local(position, s, rng_key, sizes, probs, *clients):
            j = s - jax.lax.axis_index("clients") * per_device
            mine = (j >= 0) & (j < per_device)
            j = jnp.clip(j, 0, per_device - 1)
            a, k = _with_leaves(args, kwargs, mask, [x[j] for x in clients])
            idx = jax.random.randint(rng_key, (batch_size,), 0, sizes[j])
            # The model sees ``width`` rows, so its plate scales a batch by width / n.
            weight = jnp.where(mine, sizes[j] / (probs[s] * width), 0.0)
            # Mark the position as per-device, so that ``grad`` gives this device's term and the
            # one explicit ``psum`` sums them (the gradient of a replicated input is summed by
            # ``grad`` itself, which would count it twice).
            position = jax.lax.pcast(position, "clients", to="varying")
            g = target.grad(position, idx, a, k, lik_weight=weight, prior_weight=1.0 / mesh.size)
            return jax.lax.psum(g, "clients")

        clients_spec = tuple(P("clients") for _ in aux.clients)
        fn = jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(P(), P(), P(), P("clients"), P(), *clients_spec),
            out_specs=P(),
        )
        return fn(position, s, rng_key, aux.layout.sizes, aux.layout.probs, *aux.clients)


@dataclasses.dataclass(frozen=True)
class Conducive:
    """FSGLD's estimator (El Mekkaoui, Mesquita, Blomstedt & Kaski, UAI 2021): the shard gradient
    of ``shards`` plus the conducive gradient g_cg,s(θ) of Gaussian shard approximations q_k.

    ``approximations`` (data): a :class:`GaussianApprox` over the flattened unconstrained latents
    (site names in sorted order), e.g. from a vigrad VI fit per shard. By default each q_k is a
    Laplace approximation of shard k's likelihood times p(θ)^(1/K) (the prior fraction keeps q_k
    proper when one shard alone does not identify θ), found with ``laplace_steps`` Newton
    iterations on the full shard. Any q_k leaves the gradient unbiased; better ones lower its
    variance. With ``devices`` the approximations live replicated on every device.
    """

    shards: Shards = Shards()
    approximations: GaussianApprox | None = data_field()
    laplace_steps: int = 20

    def prepare(self, problem: Problem, rng_key: jax.Array, position: Position) -> FederatedAux:
        aux = self.shards.prepare(problem, rng_key, position)
        if self.approximations is not None:
            approx = GaussianApprox(*map(jnp.asarray, self.approximations))
        else:
            approx = laplace_shards(problem, aux.layout, position, int(self.laplace_steps))
        d = ravel_pytree(position)[0].shape[0]
        k = aux.layout.sizes.shape[0]
        if approx.means.shape != (k, d) or approx.precisions.shape != (k, d, d):
            raise DataError(
                f"FSGLD approximations must have means of shape {(k, d)} and precisions of shape "
                f"{(k, d, d)} (one Gaussian per shard over the flattened latents), got "
                f"{approx.means.shape} and {approx.precisions.shape}"
            )
        return aux._replace(approx=approx)

    def start(self, aux: FederatedAux) -> None:
        return None

    def estimate(self, problem, aux: FederatedAux, position, rng_key, t, chain_key) -> Position:
        g = self.shards.estimate(problem, aux, position, rng_key, t, chain_key)
        s = self.shards.round_shard(aux, t, chain_key)
        flat, unravel = ravel_pytree(position)
        cg = conducive_gradient(aux.approx, aux.layout.probs, s, flat)
        return jax.tree.map(jnp.add, g, unravel(cg))


@functools.partial(jax.jit, static_argnums=3)
def laplace_shards(
    problem: Problem, layout: ShardLayout, position: Position, steps: int
) -> GaussianApprox:
    """Laplace approximation of each shard's likelihood times p(θ)^(1/K), over flat θ.

    The mode is found by ``steps`` Newton iterations from ``position`` (exact in one step for a
    Gaussian shard likelihood, fast for log-concave ones such as logistic regression). All shards
    are fitted together under ``vmap`` on the padded table: a row padded with its first index j
    holds width − N_s extra copies of x_j, whose log-likelihood is subtracted.
    """
    flat0, unravel = ravel_pytree(position)
    num_shards, width = layout.table.shape
    n = problem.num_data

    def fit(row, size):
        def neg_log(x):
            u = unravel(x)
            prior, lik_row = problem.log_density(u, row)  # (N / width) Σ_row ℓ_i
            _, lik_first = problem.log_density(u, row[:1])  # N ℓ_j
            shard_sum = (width * lik_row - (width - size) * lik_first) / n
            return -(prior / num_shards + shard_sum)

        def newton(_, x):
            h = jax.hessian(neg_log)(x)
            return x - jnp.linalg.solve(0.5 * (h + h.T), jax.grad(neg_log)(x))

        x = jax.lax.fori_loop(0, steps, newton, flat0)
        h = jax.hessian(neg_log)(x)
        return x, 0.5 * (h + h.T)

    means, precisions = jax.vmap(fit)(layout.table, layout.sizes)
    return GaussianApprox(means, precisions)
