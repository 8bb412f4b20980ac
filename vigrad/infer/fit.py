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
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to

from vigrad.infer.describe import array_summary, describe
from vigrad.infer.driver import Checkpointing, Step, cached, default_chunk_size, run_chunks
from vigrad.infer.sharding import (
    DATA,
    axis_size,
    data_plate_size,
    make_mesh,
    particles_over,
    place,
    place_data,
    replicate,
)
from vigrad.infer.static import join_static, split_static
from vigrad.infer.stream import Minibatches, as_stream
from vigrad.objectives.base import Objective
from vigrad.random import unrolled_key_derivation
from vigrad.reprs import fields_repr
from vigrad.traces import ensure_prototype, trace_model_and_guide, trace_program


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

    def __repr__(self) -> str:
        """Steps, final loss, the fitted parameters' shapes and how the run ended; no arrays."""
        final = float(f"{float(self.losses[-1]):.6g}") if len(self.losses) else None
        return fields_repr(
            self,
            {
                "num_steps": self.num_steps,
                "final_loss": final,
                "params": self.params,
                "diverged_at": self.diverged_at,
                "message": self.message,
            },
        )


def init_params(
    rng_key: jax.Array,
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    multi_sample: bool = False,
) -> tuple[dict[str, jax.Array], dict[str, Any]]:
    """Unconstrained initial values and constraints of every ``numpyro.param`` site.

    With ``multi_sample`` the guide returns several samples per site along a leading axis, and
    the model is run on the first (as NumPyro's ``SVI.init`` does for such guides).

    The guide and model are traced under ``jax.jit``: run eagerly, every operation of a first call
    is compiled on its own, which costs more than compiling them together. An autoguide builds
    its prototype from concrete values first (:func:`vigrad.traces.ensure_prototype`).
    """
    dynamic, static_key = split_static(args, kwargs)
    compiled_init, cons = cached(
        ("vigrad.fit.init", model, guide, static_key, multi_sample),
        lambda: _initialiser(model, guide, static_key, multi_sample),
    )
    # Seeded as the initialiser is: an autoguide's initial values come from the fit's key.
    ensure_prototype(guide, args, kwargs, rng_key)
    params = compiled_init(rng_key, dynamic)
    return params, dict(cons)


def _initialiser(model: Callable, guide: Callable, static_key: tuple, multi_sample: bool) -> tuple:
    """The compiled function computing initial params (cached by the caller, so that a second fit
    reuses its compilation), and the constraints it records each time it is traced."""
    cons = {}

    def init(key, dynamic):
        args, kwargs = join_static(dynamic, static_key)
        if multi_sample:
            guide_sites = trace_program(guide, args, kwargs, rng_key=key)
            first = {n: s["value"][0] for n, s in guide_sites.latent.items()}
            model_sites = trace_program(model, args, kwargs, rng_key=key, data=first)
        else:
            guide_sites, model_sites = trace_model_and_guide(
                model, guide, args, kwargs, guide_key=key
            )
        params = {}
        # The guide's sites last: a parameter in both programs takes the guide's initial value.
        for name, site in {**model_sites.params, **guide_sites.params}.items():
            constraint = site["kwargs"].get("constraint", constraints.real)
            cons[name] = constraint
            params[name] = biject_to(constraint).inv(site["value"])
        # Strong dtypes, so the scan carry keeps one type across steps.
        return jax.tree.map(lambda x: jax.lax.convert_element_type(x, jnp.result_type(x)), params)

    return jax.jit(init), cons


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


class _Out(NamedTuple):
    loss: jax.Array
    finite: jax.Array


def _fit_step(
    model: Callable,
    guide: Callable,
    objective: Objective,
    optimizer: optax.GradientTransformation,
    static_key: tuple,
    cons: tuple,
) -> Step:
    """One optimisation step on ``carry = (params_u, opt_state, obj_state)``."""

    def step(carry, t, consts, x):
        params_u, opt_state, obj_state = carry
        base_key, dynamic = consts
        args, kwargs = join_static(dynamic, static_key)
        if x is not None:
            kwargs = {**kwargs, **x}
        # JAX's own keys and draws, with the step's chain of key derivations (the step, the
        # particle block, the particles, guide and model, one per site in NumPyro's seed) in
        # unrolled Threefry rounds, which XLA fuses (see vigrad.random).
        key = jax.random.fold_in(unrolled_key_derivation(base_key), t)

        def loss_fn(pu):
            params = _constrain(pu, cons)
            return objective.loss_and_state(key, params, model, guide, args, kwargs, obj_state)

        (loss, new_obj_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params_u)
        finite = jnp.isfinite(loss) & jnp.all(
            jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)] or [True])
        )
        updates, new_opt_state = optimizer.update(grads, opt_state, params_u)
        new_params = optax.apply_updates(params_u, updates)
        return (new_params, new_opt_state, new_obj_state), _Out(loss, finite)

    return Step(step, lambda carry, out: out.finite, kept=lambda out: out.loss)


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
    devices: int | Sequence[jax.Device] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    data_plate: str | None = None,
    stream: Minibatches | Iterable | None = None,
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
            A checkpoint resumes on any device count.
        devices: split the data plate over this many devices (or these devices): data-parallel.
        mesh: a ``jax.sharding.Mesh`` with a ``"data"`` axis (data-parallel), a ``"particles"``
            axis (particle-parallel), or both; see the scaling page of the docs. Parameters and
            states are replicated; the result equals a one-device fit to floating-point rounding.
        data_plate: the plate whose data is split over ``"data"`` (default: the subsampled plate,
            or the largest); array arguments with its size as leading axis are split.
        stream: minibatches fed from the host (:class:`vigrad.Minibatches` over NumPy arrays or
            memmaps, or an iterable of ``{name: array}`` batches): step ``t``'s batch is passed to
            the model as keyword arguments, a chunk's worth transferred at a time.

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
    chunk_size = int(chunk_size or default_chunk_size(num_steps))
    mesh = make_mesh(devices, mesh)
    stream = None if stream is None else as_stream(stream)
    dynamic, static_key = split_static(args, kwargs)
    init_key, base_key = jax.random.split(rng_key)
    feed = None
    if stream is not None:
        # Traced with a real minibatch, which then varies per step; chunks fit the memory cap.
        kwargs = {**kwargs, **stream.example()}
        if stream.max_device_bytes is not None:
            chunk_size = min(chunk_size, stream.max_device_bytes // stream.step_bytes)
            if chunk_size < 1:
                raise ValueError(
                    f"one step's minibatch ({stream.step_bytes} bytes) is larger than "
                    f"max_device_bytes={stream.max_device_bytes}; raise the cap or shrink the batch"
                )
        feed = _feed(stream, mesh, chunk_size)

    params_u, cons = init_params(
        init_key, model, guide, args, kwargs, multi_sample=objective.multi_sample_guide
    )
    for name, value in (init_values or {}).items():
        if name not in cons:
            raise KeyError(f"init_values['{name}']: no numpyro.param site named '{name}'")
        params_u[name] = biject_to(cons[name]).inv(jnp.asarray(value))
    cons_key = tuple((name, _Same(cons[name])) for name in sorted(cons))
    params, opt_state = _setup(params_u, cons_key, optimizer)
    # Traced once with the concrete data: every site check (and the NaN-in-data check) runs here,
    # before anything is compiled.
    obj_state = objective.init_state(init_key, params, model, guide, *args, **kwargs)
    checkpointing = None
    if checkpoint_path is not None:
        run_info = _run_info(params_u, cons, objective, optimizer, opt_state, rng_key, init_values)
        run_info["num_steps"] = num_steps
        checkpointing = Checkpointing(
            checkpoint_path,
            run_info,
            pack=_pack,
            unpack=_unpack,
            to_history=lambda losses: {"losses": losses},
            from_history=lambda h: h["losses"],
            resume=resume,
        )
    elif resume not in (False, True, "extend"):
        raise ValueError(f"resume must be True, False or 'extend', got {resume!r}")

    carry, consts = (params_u, opt_state, obj_state), (base_key, dynamic)
    if mesh is not None:
        num_data = None
        if stream is None and axis_size(mesh, DATA) > 1:
            num_data = data_plate_size(model, args, kwargs, data_plate)
        carry = replicate(carry, mesh)
        consts = (replicate(base_key, mesh), place_data(dynamic, mesh, num_data))
    config = ("vigrad.fit", model, guide, objective, optimizer, static_key, cons_key, mesh)
    build = functools.partial(_fit_step, model, guide, objective, optimizer, static_key, cons_key)
    with particles_over(mesh):
        result = run_chunks(
            config,
            build,
            carry,
            consts,
            num_steps,
            chunk_size,
            feed=feed,
            progress_bar=progress_bar,
            summary=lambda losses: {"loss": float(np.mean(losses))},
            checkpointing=checkpointing,
        )

    params_u, opt_state, obj_state = result.carry
    diverged_at = result.bad_step
    message = None
    if diverged_at is not None:
        message = (
            f"fit stopped at step {diverged_at}: the loss or a gradient is NaN or infinite. The "
            f"returned parameters are the last finite ones (after step {diverged_at - 1}). Try a "
            "smaller learning rate, more particles, or check the model for invalid values."
        )
        warnings.warn(message, NonFiniteLossWarning, stacklevel=2)
    all_losses = np.zeros((0,)) if result.outputs is None else result.outputs
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


def _feed(stream, mesh: jax.sharding.Mesh | None, chunk_size: int) -> Callable:
    """A chunk's minibatches, ``[chunk_size, batch, ...]``, split over ``data`` on a mesh."""
    if mesh is None:
        return lambda step, n: stream.chunk(step, n, chunk_size)
    spec = jax.sharding.PartitionSpec(None, DATA if axis_size(mesh, DATA) > 1 else None)
    if stream.batch_size % axis_size(mesh, DATA):
        raise ValueError(
            f"the minibatch of {stream.batch_size} rows does not split evenly over "
            f"{axis_size(mesh, DATA)} devices on the '{DATA}' axis; use a batch size they divide"
        )
    sharding = jax.sharding.NamedSharding(mesh, spec)
    return lambda step, n: place(stream.chunk(step, n, chunk_size), sharding)


def _pack(carry: tuple, consts: tuple, step: int) -> dict:
    params_u, opt_state, obj_state = carry
    return {
        "params": params_u,
        "opt_state": opt_state,
        "state": obj_state,
        "step": step,
        "base_key": consts[0],
    }


def _unpack(state: dict, consts: tuple) -> tuple:
    carry = (state["params"], state["opt_state"], state["state"])
    return carry, (state["base_key"], consts[1]), state["step"]


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
