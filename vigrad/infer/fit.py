"""The fit loop: optax updates inside ``jit``, ``lax.scan`` over chunks of steps.

Step ``t`` draws its randomness from ``fold_in(rng_key, t)``, so a run does not depend on how it is
cut into chunks, and a run resumed from a checkpoint is identical to an uninterrupted one. The
compiled chunk is cached on (model, guide, objective, optimizer, static arguments, chunk length): a
second call with the same objects and shapes does not recompile. Array arguments are traced;
everything else (ints, strings, ``None``) is static and must be hashable.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to
from numpyro.handlers import replay, seed, trace

from vigrad.infer.checkpoint import resume_checkpoint, save_checkpoint
from vigrad.infer.describe import array_summary, describe
from vigrad.infer.progress import ChunkProgress
from vigrad.infer.static import join_static, split_static
from vigrad.objectives.base import Objective


class NonFiniteLossWarning(RuntimeWarning):
    """A fit stopped because the loss or a gradient was NaN or infinite."""


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        params: constrained parameters (the last finite ones if the run diverged).
        unconstrained_params: the same in unconstrained space, as the optimiser sees them.
        losses: ``[num_steps_done]`` loss (negative objective estimate) per step.
        state: the objective's state (control-variate baselines).
        opt_state: the optimiser's state.
        num_steps: number of steps completed.
        diverged_at: step at which the loss or a gradient became non-finite, or ``None``.
        message: why the run stopped early, or ``None``.
    """

    params: dict[str, jax.Array]
    unconstrained_params: dict[str, jax.Array]
    losses: np.ndarray
    state: Any
    opt_state: Any
    num_steps: int
    diverged_at: int | None = None
    message: str | None = None


def init_params(
    rng_key: jax.Array, model: Callable, guide: Callable, args: tuple, kwargs: dict
) -> tuple[dict[str, jax.Array], dict[str, Any]]:
    """Unconstrained initial values and constraints of every ``numpyro.param`` site.

    The guide and model are traced under ``jax.jit``: run eagerly, every operation of a first call
    is compiled on its own, which costs more than compiling them together. An autoguide's first
    call builds its prototype from concrete values, so that one call runs eagerly.
    """
    dynamic, static_key = split_static(args, kwargs)
    init, compiled_init, cons = _initialiser(model, guide, static_key)
    builds_prototype = getattr(guide, "prototype_trace", False) is None
    params = (init if builds_prototype else compiled_init)(rng_key, dynamic)
    return params, dict(cons)


@functools.lru_cache(maxsize=64)
def _initialiser(model: Callable, guide: Callable, static_key: tuple) -> tuple:
    """The function computing initial params, cached so that a second fit reuses its compilation,
    and the constraints it records each time it is traced."""
    cons = {}

    def init(key, dynamic):
        args, kwargs = join_static(dynamic, static_key)
        guide_tr = trace(seed(guide, key)).get_trace(*args, **kwargs)
        model_tr = trace(seed(replay(model, guide_tr), key)).get_trace(*args, **kwargs)
        params = {}
        for site in list(model_tr.values()) + list(guide_tr.values()):
            if site["type"] == "param":
                constraint = site["kwargs"].get("constraint", constraints.real)
                cons[site["name"]] = constraint
                params[site["name"]] = biject_to(constraint).inv(site["value"])
        # Strong dtypes, so the scan carry keeps one type across steps.
        return jax.tree.map(lambda x: jax.lax.convert_element_type(x, jnp.result_type(x)), params)

    return init, jax.jit(init), cons


class _Same:
    """Hashes a constraint by identity (NumPyro constraints define equality but no hash)."""

    def __init__(self, obj: Any):
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.obj is self.obj


def _constrain(params_u: dict, cons: tuple) -> dict:
    return {name: biject_to(c.obj)(params_u[name]) for name, c in cons}


@functools.partial(jax.jit, static_argnums=(1, 2))
def _setup(params_u: dict, cons: tuple, optimizer: optax.GradientTransformation):
    """Constrained params and the optimiser's state, as one compiled call (not one per op)."""
    return _constrain(params_u, cons), optimizer.init(params_u)


@functools.lru_cache(maxsize=64)
def _compiled_chunk(
    model: Callable,
    guide: Callable,
    objective: Objective,
    optimizer: optax.GradientTransformation,
    static_key: tuple,
    cons: tuple,
    num_steps: int,
) -> Callable:
    def step(carry, t, base_key, dynamic):
        params_u, opt_state, obj_state, bad_step = carry
        args, kwargs = join_static(dynamic, static_key)
        key = jax.random.fold_in(base_key, t)

        def loss_fn(pu):
            params = _constrain(pu, cons)
            return objective.loss_and_state(key, params, model, guide, args, kwargs, obj_state)

        (loss, new_obj_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params_u)
        finite = jnp.isfinite(loss) & jnp.all(
            jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)] or [True])
        )
        updates, new_opt_state = optimizer.update(grads, opt_state, params_u)
        new_params = optax.apply_updates(params_u, updates)
        # Only the first bad step is recorded; the carry is not masked, which would cost a select
        # per parameter per step. ``fit`` recovers the last finite state by replaying the chunk up
        # to that step, which is exact because step t always uses fold_in(base_key, t).
        bad_step = jnp.where(~finite & (bad_step < 0), t, bad_step)
        return (new_params, new_opt_state, new_obj_state, bad_step), loss

    def chunk(carry, start, base_key, dynamic):
        body = lambda c, t: step(c, t, base_key, dynamic)
        return jax.lax.scan(body, carry, start + jnp.arange(num_steps, dtype=jnp.int32))

    return jax.jit(chunk)


def fit(
    model: Callable,
    guide: Callable,
    objective: Objective,
    optimizer: optax.GradientTransformation,
    num_steps: int,
    rng_key: jax.Array,
    *args: Any,
    chunk_size: int | None = None,
    progress_bar: bool = True,
    init_values: dict[str, jax.Array] | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool | str = False,
    **kwargs: Any,
) -> FitResult:
    """Fit ``guide`` to ``model`` by maximising ``objective`` with ``optimizer``.

    Args:
        model, guide: NumPyro programs; ``*args`` and ``**kwargs`` are passed to both.
        objective: a vigrad objective such as :class:`vigrad.ELBO`.
        optimizer: an optax gradient transformation, e.g. ``optax.adam(1e-2)``.
        num_steps: total number of optimisation steps.
        rng_key: a JAX PRNG key; step ``t`` uses ``fold_in(rng_key, t)``.
        chunk_size: steps per compiled ``lax.scan`` chunk (default: ``num_steps / 20``); the progress
            bar, the divergence check and checkpoints happen between chunks.
        progress_bar: show a progress bar with the running loss.
        init_values: constrained initial values for some ``numpyro.param`` sites.
        checkpoint_path: if given, the state is written there after every chunk (a ``.npz``
            archive, written atomically; see the checkpoints page of the docs).
        resume: ``True``: continue from ``checkpoint_path`` if it exists (the result is identical
            to an uninterrupted run); the checkpoint must come from the same parameters,
            objective, optimiser, key, ``init_values`` and ``num_steps``.
            ``"extend"``: the same, but ``num_steps`` may differ (continue a run further).

    Returns:
        A :class:`FitResult`. If the loss or a gradient becomes NaN or infinite, the run stops, a
        :class:`NonFiniteLossWarning` names the step, and the returned parameters are the last
        finite ones.

    Raises:
        CheckpointError: resuming from a checkpoint that is not vigrad's format, is corrupt, or
            belongs to a different run.
    """
    num_steps = int(num_steps)
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    if not isinstance(objective, Objective):
        raise TypeError(
            f"fit() needs a vigrad objective such as vigrad.ELBO(), got {type(objective).__name__}"
        )
    chunk_size = int(chunk_size or max(1, math.ceil(num_steps / 20)))
    dynamic, static_key = split_static(args, kwargs)
    init_key, base_key = jax.random.split(rng_key)

    params_u, cons = init_params(init_key, model, guide, args, kwargs)
    for name, value in (init_values or {}).items():
        if name not in cons:
            raise KeyError(f"init_values['{name}']: no numpyro.param site named '{name}'")
        params_u[name] = biject_to(cons[name]).inv(jnp.asarray(value))
    cons_key = tuple((name, _Same(cons[name])) for name in sorted(cons))
    params, opt_state = _setup(params_u, cons_key, optimizer)
    # Traced once with the concrete data: every site check (and the NaN-in-data check) runs here,
    # before anything is compiled.
    obj_state = objective.init_state(init_key, params, model, guide, *args, **kwargs)
    start, losses = 0, []

    run_info = None
    if checkpoint_path is not None:
        run_info = _run_info(params_u, cons, objective, optimizer, opt_state, rng_key, init_values)
        run_info["num_steps"] = num_steps
    saved = resume_checkpoint(
        checkpoint_path,
        resume,
        {
            "params": params_u,
            "opt_state": opt_state,
            "state": obj_state,
            "step": 0,
            "base_key": base_key,
        },
        run_info,
    )
    if saved is not None:
        params_u, opt_state, obj_state = (saved.state[k] for k in ("params", "opt_state", "state"))
        start, base_key = saved.state["step"], saved.state["base_key"]
        losses = [saved.history["losses"]]

    carry = (params_u, opt_state, obj_state, jnp.array(-1, jnp.int32))
    diverged_at = None
    step = start
    with ChunkProgress(num_steps, initial=start, enabled=progress_bar) as progress:
        while step < num_steps:
            n = min(chunk_size, num_steps - step)
            run = _compiled_chunk(model, guide, objective, optimizer, static_key, cons_key, n)
            new_carry, chunk_losses = run(carry, jnp.asarray(step, jnp.int32), base_key, dynamic)
            bad = int(new_carry[3])
            chunk_losses = np.asarray(chunk_losses)
            if bad >= 0:
                losses.append(chunk_losses[: bad - step])
                diverged_at = bad
                if bad > step:
                    replay = _compiled_chunk(
                        model, guide, objective, optimizer, static_key, cons_key, bad - step
                    )
                    carry, _ = replay(carry, jnp.asarray(step, jnp.int32), base_key, dynamic)
                break
            carry = new_carry
            losses.append(chunk_losses)
            step += n
            progress.update(n, loss=float(np.mean(chunk_losses)))
            if checkpoint_path is not None:
                save_checkpoint(
                    checkpoint_path,
                    {
                        "params": carry[0],
                        "opt_state": carry[1],
                        "state": carry[2],
                        "step": step,
                        "base_key": base_key,
                    },
                    run_info,
                    history={"losses": np.concatenate(losses)},
                )

    params_u, opt_state, obj_state, _ = carry
    message = None
    if diverged_at is not None:
        message = (
            f"fit stopped at step {diverged_at}: the loss or a gradient is NaN or infinite. The "
            f"returned parameters are the last finite ones (after step {diverged_at - 1}). Try a "
            "smaller learning rate, more particles, or check the model for invalid values."
        )
        warnings.warn(message, NonFiniteLossWarning, stacklevel=2)
    all_losses = np.concatenate(losses) if losses else np.zeros((0,))
    return FitResult(
        params=_setup(params_u, cons_key, optimizer)[0],
        unconstrained_params=params_u,
        losses=all_losses,
        state=obj_state,
        opt_state=opt_state,
        num_steps=len(all_losses),
        diverged_at=diverged_at,
        message=message,
    )


def _run_info(
    params_u: dict,
    cons: dict,
    objective: Objective,
    optimizer: optax.GradientTransformation,
    opt_state: Any,
    rng_key: jax.Array,
    init_values: dict | None,
) -> dict:
    """What a checkpoint of this fit belongs to; resuming checks that each entry is unchanged."""
    leaves = jax.tree_util.tree_flatten_with_path(opt_state)[0]
    return {
        "function": "vigrad.fit",
        # A parameter may be a pytree (an ``eqx_module``'s weights): one entry per leaf.
        "params": {
            n + jax.tree_util.keystr(path): array_summary(x)
            for n in sorted(params_u)
            for path, x in jax.tree_util.tree_flatten_with_path(params_u[n])[0]
        },
        "constraints": {n: describe(cons[n]) for n in sorted(cons)},
        "objective": describe(objective),
        "optimizer": describe(optimizer),
        "optimizer_state": {jax.tree_util.keystr(p): array_summary(x) for p, x in leaves},
        "rng_key": describe(rng_key),
        "init_values": describe(init_values),
    }
