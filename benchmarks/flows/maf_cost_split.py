"""Where the fast path gradient of a masked autoregressive flow (one-pass sampling direction)
spends its time: the back substitution ``J^{-T} v`` against everything else.

Three training steps are timed side by side (gradient + Adam update, ``lax.scan`` chunks,
interleaved repeats, medians): the standard reparameterised step (flowjax ``ElboLoss``), the fast
path step (``vigrad.flows.reverse_kl_path_loss``), and the fast path step with the back
substitution replaced by a division by the Jacobian's diagonal. The third is a timing ablation
only, its gradient is wrong; it also drops the Jacobian rows the substitution consumes (dead code
without it), so the gap between the second and the third is the whole cost of applying the
strictly triangular part of ``J^{-T}``.

    .venv/bin/python benchmarks/flows/maf_cost_split.py --dims 16 64
"""

from __future__ import annotations

import argparse
import statistics
import time

import equinox as eqx
import jax
import jax.random as jr
import optax
from bench_flows import gmm_target, make_flow
from flowjax.train.losses import ElboLoss

import vigrad.flows.autoregressive as autoregressive
from vigrad.flows import reverse_kl_path_loss


def _diagonal_only(diag, left, right, v):
    return v / diag


def time_dim(d: int, args) -> dict[str, float]:
    _, d, log_p = gmm_target(d)
    flow = make_flow("maf", args.transformer, d, args.layers, args.width)
    params, static = eqx.partition(flow, eqx.is_inexact_array)
    opt = optax.adam(1e-3)
    state = opt.init(params)
    reparam = ElboLoss(log_p, args.batch, stick_the_landing=False)

    def fast(p, key):
        return reverse_kl_path_loss(eqx.combine(p, static), key, log_p, args.batch)

    def make_chunk(loss_fn):
        def step(carry, key):
            p, s = carry
            loss, grad = jax.value_and_grad(loss_fn)(p, key)
            updates, s = opt.update(grad, s, p)
            return (optax.apply_updates(p, updates), s), loss

        @jax.jit
        def chunk(p, s, key):
            (p, s), losses = jax.lax.scan(step, (p, s), jr.split(key, args.chunk))
            return p, s, losses[-1]

        return chunk

    chunks = {"reparam": make_chunk(lambda p, k: reparam(p, static, k))}
    solve = autoregressive._solve_transposed
    for name, solver in (("fast_path", solve), ("fast_path_no_substitution", _diagonal_only)):
        # The solver is looked up when the step is traced, so each chunk compiles with its own.
        autoregressive._solve_transposed = solver
        try:
            chunks[name] = make_chunk(fast)
            jax.block_until_ready(chunks[name](params, state, jr.key(0)))
        finally:
            autoregressive._solve_transposed = solve
    jax.block_until_ready(chunks["reparam"](params, state, jr.key(0)))

    times = {name: [] for name in chunks}
    for r in range(args.repeats):
        for name, chunk in chunks.items():
            t0 = time.perf_counter()
            jax.block_until_ready(chunk(params, state, jr.key(r)))
            times[name].append((time.perf_counter() - t0) / args.chunk * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dims", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--transformer", default="affine", choices=("affine", "rqs"))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    print(f"# {jax.devices()[0].platform}, {vars(args)}")
    print("\n| d | ms/step reparam | fast path | fast path, no substitution | ratios to reparam |")
    print("|---|---|---|---|---|")
    for d in args.dims:
        ms = time_dim(d, args)
        base = ms["reparam"]
        print(
            f"| {d} | {base:.3f} | {ms['fast_path']:.3f} | {ms['fast_path_no_substitution']:.3f} "
            f"| {ms['fast_path'] / base:.2f}, {ms['fast_path_no_substitution'] / base:.2f} |"
        )


if __name__ == "__main__":
    main()
