"""The SG-MCMC driver: chains by ``vmap``, steps by ``lax.scan`` in compiled chunks.

Step ``t`` of chain ``c`` draws its randomness from ``fold_in(chain_key[c], t)``, so a run does not
depend on how it is cut into chunks and a run resumed from a checkpoint equals an uninterrupted one.
Between chunks: the progress bar, the divergence check and the checkpoint.

The chunk is one module-level compiled function, :func:`run_chunk`, cached by JAX on the kernel's
static part and the structure of the problem; arrays (the data, the prepared centre, metric or
shard table, a constant step size) are its traced arguments, so a later call with arrays of the
same shapes reuses the compilation.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vigrad.errors import DataError
from vigrad.infer.checkpoint import resume_checkpoint, save_checkpoint
from vigrad.infer.describe import array_summary, describe
from vigrad.infer.progress import ChunkProgress
from vigrad.infer.static import split_static
from vigrad.sgmcmc.convergence import RHAT_MAX, ConvergenceWarning, check_convergence
from vigrad.sgmcmc.kernel import Kernel
from vigrad.sgmcmc.minibatch import Problem, Target
from vigrad.sgmcmc.random import unrolled
from vigrad.sgmcmc.results import DivergentChainError, SGMCMCResult


def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _initial_positions(
    target: Target, rng_key: jax.Array, num_chains: int, init_params: dict | None
) -> dict[str, jax.Array]:
    if init_params is None:
        keys = jax.random.split(rng_key, len(target.names))
        # As NumPyro's init_to_uniform: uniform on (-2, 2) in unconstrained space.
        return {
            n: jax.random.uniform(k, (num_chains, *target.shapes[n]), minval=-2.0, maxval=2.0)
            for n, k in zip(target.names, keys, strict=True)
        }
    missing = set(target.names) - set(init_params)
    if missing:
        raise KeyError(f"init_params has no value for latent site(s) {sorted(missing)}")
    positions = {}
    for n in target.names:
        u = target.transforms[n].inv(jnp.asarray(init_params[n]))
        if jnp.shape(u) == target.shapes[n]:
            u = jnp.broadcast_to(u, (num_chains, *target.shapes[n]))
        elif jnp.shape(u) != (num_chains, *target.shapes[n]):
            raise ValueError(
                f"init_params['{n}'] has shape {jnp.shape(init_params[n])}; expected the site's "
                f"shape or (num_chains, ...) = ({num_chains}, ...)"
            )
        positions[n] = u
    return positions


def _chain_sharding(devices: int | Sequence[jax.Device], num_chains: int):
    devs = jax.devices()[:devices] if isinstance(devices, int) else list(devices)
    if num_chains % len(devs):
        raise ValueError(
            f"num_chains={num_chains} must be a multiple of the number of devices ({len(devs)})"
        )
    mesh = jax.sharding.Mesh(np.array(devs), ("chains",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("chains"))


def transitions(
    kernel: Kernel,
    problem: Problem,
    aux: Any,
    states: Any,
    t: jax.Array,
    chain_keys: jax.Array,
    keys: jax.Array,
    step_size: jax.Array,
) -> Any:
    """Step t of every chain: ``vmap`` over chains (one chain without it, so minibatch gathers and
    products keep their unbatched form). ``step_size`` is a scalar or one ε per chain."""
    eps = kernel.step_size(t) if callable(kernel.step_size) else step_size

    def per_chain(state, chain_key, keys, eps):
        return kernel.transition(problem, aux, state, keys, t, chain_key, eps)

    eps = jnp.broadcast_to(eps, chain_keys.shape[:1])
    if chain_keys.shape[0] == 1:
        one = per_chain(jax.tree.map(lambda x: x[0], states), chain_keys[0], keys[0], eps[0])
        return jax.tree.map(lambda x: x[None], one)
    return jax.vmap(per_chain)(states, chain_keys, keys, eps)


@functools.partial(jax.jit, static_argnames=("kernel", "buffer_size", "max_steps"))
def run_chunk(
    kernel: Kernel,
    problem: Problem,
    carry: Any,
    start: jax.Array,
    n_outer: jax.Array,
    n_inner: jax.Array,
    chain_keys: jax.Array,
    step_size: jax.Array,
    aux: Any,
    buffer_size: int,
    max_steps: int,
) -> tuple[Any, Any]:
    """``n_outer * n_inner`` steps from step ``start``, keeping every ``n_inner``-th position.

    The compilation is cached by JAX on the static arguments and the pytree structure of the
    others: ``kernel`` (its static part, :meth:`Kernel.static`), the problem's model, plate, site
    shapes, non-array arguments and batch size, and the two buffer sizes. Trip counts are traced,
    so warm-up, sampling and a short last chunk share one compilation; draws go into a buffer of
    static size (indices past it are clamped and ignored).
    """
    target = problem.target
    # Step t of chain c uses split(fold_in(chain_key[c], t)). The chunk's keys are derived in one
    # vectorised call before the loop: a small hash per step inside the loop costs about as much
    # as the rest of an SGLD step on CPU. The draws inside the loop use the same bits through
    # unrolled Threefry rounds, which XLA fuses (see vigrad.sgmcmc.random).
    ts = start + jnp.arange(max_steps, dtype=jnp.int32)
    step_keys = unrolled(
        jax.vmap(
            lambda t: jax.vmap(lambda c: jax.random.split(jax.random.fold_in(c, t)))(chain_keys)
        )(ts)
    )

    def body(j, loop):
        # One flat loop over the chunk's steps (a nested loop per draw costs more per step on
        # CPU); the draw slot j // n_inner is overwritten until its last step.
        # No per-step NaN check: a NaN or infinite position stays non-finite, so the driver finds
        # a divergence from the chunk's final state and locates it in the draws.
        states, buffer = loop
        states = transitions(
            kernel, problem, aux, states, start + j, chain_keys, step_keys[j], step_size
        )
        draw = jax.vmap(target.constrain)(states.position)
        buffer = jax.tree.map(
            lambda b, d: jax.lax.dynamic_update_index_in_dim(b, d, j // n_inner, 0),
            buffer,
            draw,
        )
        return states, buffer

    draw = jax.eval_shape(jax.vmap(target.constrain), carry.position)
    buffer = jax.tree.map(lambda d: jnp.zeros((buffer_size, *d.shape), d.dtype), draw)
    return jax.lax.fori_loop(0, n_outer * n_inner, body, (carry, buffer))


def constant_step_size(kernel: Kernel) -> jax.Array:
    """ε as a traced argument (0 for a schedule, which is part of the static kernel)."""
    return jnp.asarray(0.0 if callable(kernel.step_size) else kernel.step_size, float)


def sample(
    model: Callable,
    kernel: Kernel,
    num_samples: int,
    batch_size: int,
    num_chains: int,
    rng_key: jax.Array,
    *args: Any,
    num_warmup: int = 0,
    thinning: int = 1,
    progress_bar: bool = True,
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool | str = False,
    init_params: dict | None = None,
    data_plate: str | None = None,
    chunk_size: int | None = None,
    devices: int | Sequence[jax.Device] | None = None,
    check: bool = True,
    **kwargs: Any,
) -> SGMCMCResult:
    """Run ``num_chains`` stochastic-gradient MCMC chains on a NumPyro model.

    Example::

        result = vigrad.sgmcmc.sample(model, vigrad.sgmcmc.SGLD(step_size=1e-4), num_samples=10_000,
                                      batch_size=256, num_chains=4, rng_key=key, x=X, y=y)
        idata = result.to_inference_data()

    Args:
        model: a NumPyro model whose observed sites sit in a data plate (``numpyro.plate``) and
            index the data by it (``numpyro.subsample(x, event_dim=...)``); ``*args`` and
            ``**kwargs`` are passed to it. Array arguments are traced, others are static.
        kernel: :class:`SGLD`, :class:`pSGLD`, :class:`SGHMC`, :class:`SGLDCV`,
            :class:`PreconditionedSGLDCV`, :class:`DSGLD`, :class:`FSGLD` or any :class:`Kernel`
            (e.g. ``Kernel.of(update, gradient, step_size)``).
        num_samples: steps after warm-up; every ``thinning``-th is kept, so each chain has
            ``num_samples // thinning`` draws.
        batch_size: data points per gradient estimate (drawn uniformly with replacement; the
            likelihood is scaled by N / batch_size).
        num_chains: independent chains, run together with ``vmap``.
        rng_key: a JAX PRNG key.
        num_warmup: burn-in steps, discarded.
        progress_bar: a progress bar updated once per compiled chunk.
        checkpoint_path: if given, the run's state is written there after every chunk (a ``.npz``
            archive, written atomically; see the checkpoints page of the docs).
        resume: ``True``: continue from ``checkpoint_path`` if it exists (identical to an
            uninterrupted run); the checkpoint must come from the same latent sites, kernel, key,
            chains, batch size, warm-up, thinning, ``init_params`` and ``num_samples``.
            ``"extend"``: the same, but ``num_samples`` may differ (draw more samples).
        init_params: constrained starting values per latent site (site shape, or with a leading
            chain axis). Default: uniform on (-2, 2) in unconstrained space, or the kernel's
            centre (SGLD-CV).
        data_plate: the plate to minibatch, when the observed sites share several plates.
        chunk_size: steps per compiled chunk (default: a twentieth of the run).
        devices: an int or a list of devices to split the chains over (``jax.sharding``);
            ``num_chains`` must be a multiple of their number.
        check: check convergence (split R-hat, bulk and tail ESS against ArviZ's thresholds) and
            warn with :class:`ConvergenceWarning` when the draws fail it.

    Returns:
        :class:`SGMCMCResult` with ``samples[name]`` of shape ``(num_chains, num_draws, ...)`` and
        ``convergence`` (``None`` with ``check=False``).

    Raises:
        DataError: no data plate, data not indexed by the plate, or a batch larger than the data.
        DivergentChainError: a chain became NaN or infinite (names the chain and the step).
        CheckpointError: resuming from a checkpoint that is not vigrad's format, is corrupt, or
            belongs to a different run.
    """
    if not isinstance(kernel, Kernel):
        raise TypeError(
            "sample() needs a vigrad.sgmcmc kernel such as vigrad.sgmcmc.SGLD(step_size=1e-4), "
            f"got {type(kernel).__name__}"
        )
    num_samples, num_warmup, thinning = int(num_samples), int(num_warmup), int(thinning)
    num_chains, batch_size = int(num_chains), int(batch_size)
    if num_samples < 1 or thinning < 1 or num_chains < 1 or num_warmup < 0 or batch_size < 1:
        raise ValueError(
            "num_samples, thinning, num_chains and batch_size must be at least 1 and num_warmup "
            f"at least 0 (got {num_samples}, {thinning}, {num_chains}, {batch_size}, {num_warmup})"
        )
    num_draws = num_samples // thinning
    if num_draws < 1:
        raise ValueError(f"num_samples={num_samples} < thinning={thinning} keeps no draw")
    dynamic, static_key = split_static(args, kwargs)
    init_key, prep_key, base_key = jax.random.split(rng_key, 3)
    target = Target(model, args, kwargs, init_key, data_plate)
    if batch_size > target.num_data:
        raise DataError(
            f"batch_size={batch_size} is larger than the data plate '{target.plate}' "
            f"({target.num_data} points); use batch_size <= {target.num_data}"
        )

    static = kernel.static()
    problem = Problem(target, dynamic, static_key, batch_size)
    positions = _initial_positions(target, init_key, num_chains, init_params)
    first = jax.tree.map(lambda x: x[0], positions)
    aux = kernel.gradient.prepare(problem, prep_key, first)
    start_at = kernel.gradient.start(aux)
    if start_at is not None and init_params is None:
        positions = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_chains, *x.shape)), start_at)
    states = jax.vmap(kernel.init)(positions)
    chain_keys = jax.random.split(base_key, num_chains)
    if devices is not None:
        sharding = _chain_sharding(devices, num_chains)
        states = jax.device_put(states, sharding)
        chain_keys = jax.device_put(chain_keys, sharding)

    total = num_warmup + num_draws * thinning
    chunk = int(chunk_size or max(1, math.ceil(total / 20)))
    chunk_draws = max(1, chunk // thinning)
    step, draws = 0, []
    run_info = None
    if checkpoint_path is not None:
        run_info = _run_info(states, kernel, rng_key, init_params, target.plate)
        run_info.update(
            num_chains=num_chains,
            batch_size=batch_size,
            num_warmup=num_warmup,
            thinning=thinning,
            num_samples=num_samples,
            num_steps=total,
        )
    saved = resume_checkpoint(
        checkpoint_path,
        resume,
        {"states": states, "chain_keys": chain_keys, "aux": aux, "step": 0},
        run_info,
        extendable=("num_samples", "num_steps"),
    )
    if saved is not None:
        states, chain_keys, aux = (saved.state[k] for k in ("states", "chain_keys", "aux"))
        step = saved.state["step"]
        draws = [saved.history] if saved.history else []

    step_size = constant_step_size(kernel)
    carry = states
    with ChunkProgress(total, initial=step, desc="vigrad.sgmcmc", enabled=progress_bar) as bar:
        while step < total:
            if step < num_warmup:
                n_outer, n_inner, collect = min(chunk, num_warmup - step), 1, False
            else:
                done = (step - num_warmup) // thinning
                n_outer = min(chunk_draws, num_draws - done)
                n_inner, collect = thinning, True
            i32 = functools.partial(jnp.asarray, dtype=jnp.int32)
            carry, out = run_chunk(
                static,
                problem,
                carry,
                i32(step),
                i32(n_outer),
                i32(n_inner),
                chain_keys,
                step_size,
                aux,
                chunk_draws,
                chunk,
            )
            finite = np.asarray(jax.vmap(_all_finite)(carry.position))
            if not finite.all():
                c = int(np.argmin(finite))
                slots = min(n_outer, chunk_draws)
                ok = [
                    bool(np.all([np.isfinite(x[i, c]).all() for x in jax.tree.leaves(out)]))
                    for i in range(slots)
                ]
                i = ok.index(False) if False in ok else slots - 1
                first = step + i * n_inner
                last = step + n_outer * n_inner if i == slots - 1 else first + n_inner
                raise DivergentChainError(
                    f"chain {c} diverged between steps {first} and {last}: its position became "
                    f"NaN or infinite. Use a smaller step size (now {kernel.step_size!r}) or a "
                    "larger batch, or check the model for invalid values."
                )
            if collect:
                draws.append(
                    jax.tree.map(lambda x, n=n_outer: np.swapaxes(np.asarray(x)[:n], 0, 1), out)
                )
            step += n_outer * n_inner
            bar.update(n_outer * n_inner)
            if checkpoint_path is not None:
                save_checkpoint(
                    checkpoint_path,
                    {"states": carry, "chain_keys": chain_keys, "aux": aux, "step": step},
                    run_info,
                    history=_concat(draws),
                )
    samples = _concat(draws)
    convergence = None
    if check:
        convergence = check_convergence(samples)
        if not convergence.ok:
            fix = _fix(kernel, num_chains, num_samples, convergence)
            convergence = check_convergence(samples, fix=fix)
            warnings.warn(convergence.message, ConvergenceWarning, stacklevel=2)
    return SGMCMCResult(
        samples=samples,
        state=carry,
        aux=aux,
        num_warmup=num_warmup,
        num_steps=total,
        thinning=thinning,
        convergence=convergence,
        kernel=kernel,
        model=model,
        args=args,
        kwargs=kwargs,
        data_plate=target.plate,
        num_data=target.num_data,
    )


MULTIMODAL_RHAT = 1.5
"""Above this R-hat the advice also raises multimodality (chains in separate regions)."""


def _fix(kernel: Kernel, num_chains: int, num_samples: int, convergence) -> str:
    """The advice printed with a failed convergence check: the knobs of this run and, as ESS
    grows about linearly with the number of steps, how many steps would reach the ESS needed."""
    ess = min(convergence.min_ess_bulk, convergence.min_ess_tail)
    needed = math.ceil(num_samples * convergence.ess_required / max(ess, 1.0) / 1000) * 1000
    # Chains that disagree have not forgotten their starts: at least double the run.
    needed = max(needed, 2 * num_samples) if convergence.max_rhat > RHAT_MAX else needed
    step = "" if callable(kernel.step_size) else f" (now {kernel.step_size:g})"
    advice = (
        f"run longer: about num_samples={needed} (now {num_samples}), with a longer warm-up if "
        f"R-hat is large; if the step size{step} was not chosen by "
        "vigrad.sgmcmc.select_step_size, choose it with that first (the largest step whose draws "
        "stay accurate mixes fastest); for a posterior with strongly correlated or differently "
        "scaled coordinates, a preconditioned kernel mixes much faster "
        "(vigrad.sgmcmc.PreconditionedSGLDCV, `vigrad sample --kernel sgldcv-pre`)"
    )
    if num_chains < 2:
        advice += "; run at least 2 chains (4 is usual) so R-hat can be checked"
    if convergence.max_rhat > MULTIMODAL_RHAT:
        advice += (
            f". An R-hat of {convergence.max_rhat:.2f} means chains sitting in different regions: "
            "if they stay apart in a trace plot, the posterior is multimodal (e.g. a neural "
            "network's hidden-unit symmetries), no run length will mix it, and each chain is at "
            "best a sample from one mode"
        )
    return advice


def _run_info(
    states: Any, kernel: Kernel, rng_key: jax.Array, init_params: dict | None, plate: str
) -> dict:
    """What a checkpoint of this run belongs to; resuming checks that each entry is unchanged."""
    return {
        "function": "vigrad.sgmcmc.sample",
        "positions": {n: array_summary(x) for n, x in sorted(states.position.items())},
        "kernel": describe(kernel),
        "rng_key": describe(rng_key),
        "init_params": describe(init_params),
        "data_plate": plate,
    }


def _concat(draws: list) -> dict | None:
    if not draws:
        return None
    return jax.tree.map(lambda *xs: np.concatenate(xs, axis=1), *draws)
