"""Step-size selection by a short pilot run scored with the kernel Stein discrepancy.

SG-MCMC has no accept/reject step to adapt against: a step too small never reaches or crosses the
posterior in the steps available, a step too large samples a distribution wider (or, with noisy
gradients, much wider) than the posterior or diverges. Following Coullon, South & Nemeth (2023,
"Efficient and generalizable tuning strategies for stochastic gradient MCMC", Stat. Comput.), every
step size of a log-spaced grid runs a few chains for a short pilot, all grid points at once under
one ``vmap``; the kept draws of each (the second half of the pilot, pooled over its chains) are
scored by the IMQ kernel Stein discrepancy (:mod:`vigrad.sgmcmc.stein`) with full-data scores,
and the step size with the smallest discrepancy wins. The discrepancy measures both failures, so
no threshold or acceptance rate has to be guessed.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from vigrad.infer.static import split_static
from vigrad.random import unrolled
from vigrad.sgmcmc.kernel import Kernel
from vigrad.sgmcmc.minibatch import Problem, Target, minibatch_indices
from vigrad.sgmcmc.sample import _initial_positions, transitions
from vigrad.sgmcmc.stein import imq_ksd

DEFAULT_GRID = tuple(10.0 ** np.arange(-8.0, 0.01, 0.5))
"""ε from 1e-8 to 1 in steps of √10."""
MAX_SCORE_POINTS = 10_000
"""Data points per score evaluation; a larger data plate is subsampled (with N/n scaling)."""


class StepSizeSelection(NamedTuple):
    """What :func:`select_step_size` measured.

    Attributes:
        step_size: the chosen ε (smallest kernel Stein discrepancy).
        kernel: the input kernel with ``step_size`` replaced by the chosen ε.
        step_sizes: the grid tried.
        ksd: ``[len(step_sizes)]`` the IMQ kernel Stein discrepancy of each grid point's pilot
            draws (``inf`` where a chain diverged).
        message: a one-line reading, with a warning when the choice sits at an end of the grid.
    """

    step_size: float
    kernel: Kernel
    step_sizes: np.ndarray
    ksd: np.ndarray
    message: str


def select_step_size(
    model: Callable,
    kernel: Kernel,
    batch_size: int,
    rng_key: jax.Array,
    *args: Any,
    step_sizes: Sequence[float] = DEFAULT_GRID,
    num_steps: int = 1000,
    num_chains: int = 4,
    num_draws: int = 100,
    init_params: dict | None = None,
    data_plate: str | None = None,
    **kwargs: Any,
) -> StepSizeSelection:
    """Choose ``kernel``'s step size by a pilot run per grid point, scored by the kernel Stein
    discrepancy of its draws (Gorham & Mackey 2017; Coullon, South & Nemeth 2023).

    Example::

        sel = vigrad.sgmcmc.select_step_size(model, vigrad.sgmcmc.SGLD(1e-4), 64, key, x=X, y=y)
        result = vigrad.sgmcmc.sample(model, sel.kernel, 5000, 64, 4, key, x=X, y=y)

    Args:
        model, batch_size, rng_key, init_params, data_plate, ``*args``, ``**kwargs``: as for
            :func:`vigrad.sgmcmc.sample` (use the same batch size: the best step depends on it).
        kernel: any :class:`Kernel`; its own ``step_size`` is ignored and replaced by the choice.
        step_sizes: the grid (default ``DEFAULT_GRID``, 1e-8 to 1 in steps of √10).
        num_steps: pilot steps per chain; draws are kept from the second half.
        num_chains: pilot chains per grid point.
        num_draws: draws kept per chain (evenly spaced over the second half).

    Returns:
        :class:`StepSizeSelection`.
    """
    grid = np.asarray(sorted(float(e) for e in step_sizes))
    if grid.size < 2 or np.any(grid <= 0):
        raise ValueError(f"step_sizes needs at least two positive values, got {list(step_sizes)}")
    num_steps, num_chains, num_draws = int(num_steps), int(num_chains), int(num_draws)
    if num_steps < 2 * num_draws:
        raise ValueError(
            f"num_steps={num_steps} must be at least 2 * num_draws={2 * num_draws} (draws are "
            "kept from the second half of the pilot)"
        )
    dynamic, static_key = split_static(args, kwargs)
    init_key, prep_key, base_key, score_key = jax.random.split(rng_key, 4)
    target = Target(model, args, kwargs, init_key, data_plate)
    if batch_size > target.num_data:
        batch_size = target.num_data
    total = grid.size * num_chains
    problem = Problem(target, dynamic, static_key, batch_size)
    positions = _initial_positions(target, init_key, total, init_params)
    aux = kernel.gradient.prepare(problem, prep_key, jax.tree.map(lambda x: x[0], positions))
    start_at = kernel.gradient.start(aux)
    if start_at is not None and init_params is None:
        positions = jax.tree.map(lambda x: jnp.broadcast_to(x, (total, *x.shape)), start_at)
    eps = jnp.repeat(jnp.asarray(grid, jnp.result_type(float)), num_chains)
    chain_keys = jax.random.split(base_key, total)
    thin = max(1, (num_steps - num_steps // 2) // num_draws)
    burn = num_steps - thin * num_draws
    # The pilot's kernel has a constant step size (one per chain): a schedule is not piloted.
    pilot_kernel = dataclasses.replace(kernel, step_size=1.0).static()
    draws = _pilot(pilot_kernel, problem, positions, eps, chain_keys, aux, burn, thin, num_draws)
    ksd = np.asarray(_ksd_per_step(problem, draws, score_key, grid.size))
    best = int(np.argmin(np.where(np.isfinite(ksd), ksd, np.inf)))
    if not np.isfinite(ksd[best]):
        raise FloatingPointError(
            "every step size in the pilot grid diverged (min "
            f"{grid[0]:g}); pass smaller step_sizes=... or check the model for invalid values"
        )
    chosen = float(grid[best])
    message = (
        f"step size {chosen:g} chosen by the kernel Stein discrepancy of a pilot of {num_steps} "
        f"steps x {num_chains} chains per grid point (KSD {ksd[best]:.3g})"
    )
    if best in (0, grid.size - 1):
        end = "smallest" if best == 0 else "largest"
        message += (
            f"; warning: it is the {end} step size tried, widen step_sizes=... past {chosen:g}"
        )
    return StepSizeSelection(
        chosen, dataclasses.replace(kernel, step_size=chosen), grid, ksd, message
    )


@functools.partial(jax.jit, static_argnums=(0, 6, 7, 8))
def _pilot(kernel, problem, positions, eps, chain_keys, aux, burn, thin, num_draws) -> Any:
    """All pilot chains (every grid point's) in one compiled ``vmap`` + ``scan``; step t of chain
    c uses split(fold_in(chain_key[c], t)), as in :func:`vigrad.sgmcmc.sample`."""

    def one(state, t):
        keys = unrolled(jax.vmap(lambda c: jax.random.split(jax.random.fold_in(c, t)))(chain_keys))
        return transitions(kernel, problem, aux, state, t, chain_keys, keys, eps)

    def steps(state, start, n):
        return jax.lax.fori_loop(start, start + n, lambda t, s: one(s, t), state)

    state = steps(jax.vmap(kernel.init)(positions), 0, burn)

    def keep(state, i):
        state = steps(state, burn + i * thin, thin)
        return state, state.position

    _, kept = jax.lax.scan(keep, state, jnp.arange(num_draws))
    # [draws, chains, ...] -> [chains, draws, ...]
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), kept)


@functools.partial(jax.jit, static_argnums=3)
def _ksd_per_step(problem, draws, rng_key, num_grid):
    num_data = problem.num_data
    n = min(num_data, MAX_SCORE_POINTS)
    idx = jnp.arange(n) if n == num_data else minibatch_indices(rng_key, num_data, n)
    # [grid, chains * draws, ...] per site.
    pooled = jax.tree.map(lambda x: x.reshape(num_grid, -1, *x.shape[2:]), draws)

    def score(position):
        return ravel_pytree(problem.grad(position, idx))[0]

    def one_grid_point(points):
        flat = jax.vmap(lambda p: ravel_pytree(p)[0])(points)
        return imq_ksd(flat, jax.lax.map(score, points))

    return jax.lax.map(one_grid_point, pooled)
