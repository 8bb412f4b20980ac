"""SG-MCMC sampling: chains by ``vmap``, steps in the compiled chunks of the run driver.

Step ``t`` of chain ``c`` draws its randomness from ``fold_in(chain_key[c], t)``, so a run does not
depend on how it is cut into chunks and a run resumed from a checkpoint equals an uninterrupted one.
The chunks, the progress bar, the divergence check (the first step where a chain's position is NaN
or infinite) and the checkpoints are :mod:`vigrad.infer.driver`'s, shared with :func:`vigrad.fit`.

The step, :func:`sample_step`, is built once per static part of the kernel
(:meth:`Kernel.static`) and its compiled chunk is cached by the driver; the problem's structure
(model, plate, site shapes, non-array arguments, batch size) is part of the compiled function's
signature, and arrays (the data, the prepared centre, metric or shard table, a constant step size,
the keys) are traced arguments, so a later call with arrays of the same shapes reuses the
compilation.
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
from vigrad.infer.describe import array_summary, describe
from vigrad.infer.driver import Checkpointing, Step, default_chunk_size, run_chunks
from vigrad.infer.sharding import place
from vigrad.infer.static import split_static
from vigrad.random import unrolled
from vigrad.sgmcmc.convergence import RHAT_MAX, ConvergenceWarning, check_convergence
from vigrad.sgmcmc.kernel import Kernel
from vigrad.sgmcmc.minibatch import Problem, Target
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


def sample_step(kernel: Kernel) -> Step:
    """The run driver's step for ``kernel`` (its static part): every chain's transition ``t``.

    The carry is the chains' kernel states; the constants are ``(problem, chain_keys, step_size,
    aux)``; the output is the constrained position (the draw); a chain whose position is NaN or
    infinite fails ``finite``.
    """

    def step(states, t, consts, keys):
        problem, chain_keys, step_size, aux = consts
        states = transitions(kernel, problem, aux, states, t, chain_keys, keys, step_size)
        return states, jax.vmap(problem.target.constrain)(states.position)

    def finite(states, draw):
        return jax.vmap(_all_finite)(states.position)

    def inputs(consts, start, size, fed):
        # Step t of chain c uses split(fold_in(chain_key[c], t)). The chunk's keys are derived in
        # one vectorised call before the loop: a small hash per step inside the loop costs about
        # as much as the rest of an SGLD step on CPU. The draws inside the loop use the same bits
        # through unrolled Threefry rounds, which XLA fuses (see vigrad.random).
        chain_keys = consts[1]
        ts = start + jnp.arange(size, dtype=jnp.int32)
        return unrolled(
            jax.vmap(
                lambda t: jax.vmap(lambda c: jax.random.split(jax.random.fold_in(c, t)))(chain_keys)
            )(ts)
        )

    return Step(step, finite, inputs)


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
        chunk_size: steps per compiled chunk (default: a twentieth of the run), rounded down to
            whole thinning groups (at least one).
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
        # Global arrays: with jax.distributed the chains span every process's devices.
        states, chain_keys = place((states, chain_keys), sharding)

    total = num_warmup + num_draws * thinning
    chunk = int(chunk_size or default_chunk_size(total))
    checkpointing = None
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
        checkpointing = Checkpointing(
            checkpoint_path,
            run_info,
            pack=_pack,
            unpack=_unpack,
            to_history=_by_chain,
            from_history=_by_chain,
            resume=resume,
            extendable=("num_samples", "num_steps"),
        )
    elif resume not in (False, True, "extend"):
        raise ValueError(f"resume must be True, False or 'extend', got {resume!r}")

    result = run_chunks(
        ("vigrad.sgmcmc.sample", static),
        functools.partial(sample_step, static),
        states,
        (problem, chain_keys, constant_step_size(kernel), aux),
        total,
        # The driver keeps whole thinning groups per chunk.
        max(1, chunk // thinning) * thinning,
        warmup=num_warmup,
        thinning=thinning,
        progress_bar=progress_bar,
        desc="vigrad.sgmcmc",
        checkpointing=checkpointing,
    )
    if result.bad_step is not None:
        bad, chain = result.bad_step, int(np.argmin(result.bad_mask))
        raise DivergentChainError(
            f"chain {chain} diverged between steps {bad} and {bad + 1}: its position became "
            f"NaN or infinite. Use a smaller step size (now {kernel.step_size!r}) or a larger "
            "batch, or check the model for invalid values."
        )
    carry, aux = result.carry, result.consts[3]
    samples = _by_chain(result.outputs)
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


def _pack(states: Any, consts: tuple, step: int) -> dict:
    return {"states": states, "chain_keys": consts[1], "aux": consts[3], "step": step}


def _unpack(state: dict, consts: tuple) -> tuple:
    problem, _, step_size, _ = consts
    consts = (problem, state["chain_keys"], step_size, state["aux"])
    return state["states"], consts, state["step"]


def _by_chain(draws: dict) -> dict:
    """Draws with the chain axis first (the result's and the checkpoint's layout) from the
    driver's step-first layout, and back."""
    return {n: np.ascontiguousarray(np.swapaxes(x, 0, 1)) for n, x in draws.items()}
