"""Fast path gradient vs the standard reparameterised gradient vs the slow path gradient
(flowjax ``ElboLoss(stick_the_landing=True)``: inverse pass plus autodiff) for coupling and masked
autoregressive flows.

For each flow and target: cost per training step (gradient + Adam update, lax.scan chunks) of the
three, measured interleaved under the same load; then (unless ``--cost-only``) training at equal
wall time (round-robin chunks until each method has used the same budget), gradient variance
(trace of the covariance of the batch gradient over keys) at each method's final parameters, and
the final reverse ESS ``1 / mean(w^2)`` (w normalised to mean 1) from 4096 draws of the trained
flow.

Flows (``--flows``): ``coupling`` (coupling layers, sampling direction ``invert=False``), ``maf``
(masked autoregressive layers in their one-pass direction for sampling, flowjax ``invert=False``)
and ``maf_inverted`` (flowjax's default ``invert=True``: sampling runs the sequential inverse,
the density the one pass); each with the transformers of ``--transformers`` (``rqs``: rational
quadratic spline with 8 knots, ``affine``). The conditioner width is ``max(--width, d)`` (a masked
autoregressive network narrower than ``d - 1`` leaves the last coordinates unconditioned).

    .venv/bin/python benchmarks/flows/bench_flows.py --dims 2 4 8 16 --budget 10
    .venv/bin/python benchmarks/flows/bench_flows.py --cost-only --dims 4 16 64 --funnel 0 \\
        --flows coupling maf maf_inverted --transformers affine rqs
"""

from __future__ import annotations

import argparse
import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax
from flowjax.bijections import RationalQuadraticSpline
from flowjax.distributions import StandardNormal
from flowjax.flows import coupling_flow, masked_autoregressive_flow
from flowjax.train.losses import ElboLoss

from vigrad.flows import reverse_kl_path_loss

METHODS = ("reparam", "slow_path", "fast_path")
FLOWS = ("coupling", "maf", "maf_inverted")


def gmm_target(d: int, k: int = 4, spread: float = 2.5):
    means = spread * jr.normal(jr.key(100 + d), (k, d))

    def log_p(x):
        comps = -0.5 * jnp.sum((x - means) ** 2, axis=-1) - 0.5 * d * jnp.log(2 * jnp.pi)
        return jax.nn.logsumexp(comps) - jnp.log(k)

    return f"gmm{k} d={d}", d, log_p


def funnel_target(d: int):
    def log_p(x):
        v, rest = x[0], x[1:]
        lp_v = -0.5 * v**2 / 9.0 - 0.5 * jnp.log(2 * jnp.pi * 9.0)
        lp_rest = -0.5 * jnp.sum(rest**2) * jnp.exp(-v) - 0.5 * (d - 1) * (v + jnp.log(2 * jnp.pi))
        return lp_v + lp_rest

    return f"funnel d={d}", d, log_p


def make_flow(kind: str, transformer: str, d: int, layers: int, width: int):
    build = coupling_flow if kind == "coupling" else masked_autoregressive_flow
    extra = (
        {}
        if transformer == "affine"
        else {"transformer": RationalQuadraticSpline(knots=8, interval=5.0)}
    )
    return build(
        jr.key(0),
        base_dist=StandardNormal((d,)),
        flow_layers=layers,
        nn_width=max(width, d),
        invert=kind == "maf_inverted",
        **extra,
    )


def losses(log_p, batch):
    reparam = ElboLoss(log_p, batch, stick_the_landing=False)
    slow = ElboLoss(log_p, batch, stick_the_landing=True)

    def fast(params, static, key):
        return reverse_kl_path_loss(eqx.combine(params, static), key, log_p, batch)

    return {
        "reparam": lambda p, s, k: reparam(p, s, k),
        "slow_path": lambda p, s, k: slow(p, s, k),
        "fast_path": fast,
    }


def run_target(flow_name, d, log_p, args):
    kind, transformer = flow_name.split(" ")
    flow = make_flow(kind, transformer, d, args.layers, args.width)
    params0, static = eqx.partition(flow, eqx.is_inexact_array)
    opt = optax.adam(args.lr)
    loss_fns = losses(log_p, args.batch)

    def make_chunk(loss_fn):
        def step(carry, key):
            params, state = carry
            loss, grad = jax.value_and_grad(loss_fn)(params, static, key)
            updates, state = opt.update(grad, state, params)
            return (optax.apply_updates(params, updates), state), loss

        @jax.jit
        def chunk(params, state, key):
            keys = jr.split(key, args.chunk)
            (params, state), ls = jax.lax.scan(step, (params, state), keys)
            return params, state, ls[-1]

        return chunk

    chunks = {m: make_chunk(loss_fns[m]) for m in METHODS}
    carry = {m: (params0, opt.init(params0)) for m in METHODS}
    for m in METHODS:  # compile
        jax.block_until_ready(chunks[m](*carry[m], jr.key(0)))

    # Cost per step: interleaved repeats from the initial parameters, medians.
    times = {m: [] for m in METHODS}
    for r in range(args.repeats):
        for m in METHODS:
            t0 = time.perf_counter()
            jax.block_until_ready(chunks[m](*carry[m], jr.key(r)))
            times[m].append((time.perf_counter() - t0) / args.chunk)
    cost = {m: statistics.median(times[m]) for m in METHODS}
    if args.cost_only:
        return cost, []

    # Equal wall time: round-robin chunks while a method's used time is under the budget.
    used = dict.fromkeys(METHODS, 0.0)
    steps = dict.fromkeys(METHODS, 0)
    key = jr.key(1)
    while any(used[m] < args.budget for m in METHODS):
        key, sub = jr.split(key)
        for m in METHODS:
            if used[m] >= args.budget:
                continue
            t0 = time.perf_counter()
            p, s, _ = chunks[m](*carry[m], sub)
            jax.block_until_ready(p)
            used[m] += time.perf_counter() - t0
            carry[m] = (p, s)
            steps[m] += args.chunk

    @jax.jit
    def ess(params):
        f = eqx.combine(params, static)
        x, log_q = f.sample_and_log_prob(jr.key(7), (4096,))
        log_w = jax.vmap(log_p)(x) - log_q
        w = jnp.exp(log_w - jax.nn.logsumexp(log_w) + jnp.log(log_w.shape[0]))
        return 1.0 / jnp.mean(w**2), jnp.mean(log_w)

    def grad_variance(m, params):
        g = jax.jit(jax.vmap(lambda k: jax.grad(loss_fns[m])(params, static, k)))(
            jr.split(jr.key(9), args.variance_keys)
        )
        return sum(float(jnp.sum(jnp.var(x, axis=0, ddof=1))) for x in jax.tree.leaves(g))

    rows = []
    for m in METHODS:
        e, elbo = ess(carry[m][0])
        rows.append(
            (m, cost[m], steps[m], used[m], grad_variance(m, carry[m][0]), float(e), float(elbo))
        )
    return cost, rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--funnel", type=int, default=8, help="funnel dimension (0: skip)")
    parser.add_argument("--flows", nargs="+", default=["coupling"], choices=FLOWS)
    parser.add_argument("--transformers", nargs="+", default=["rqs"], choices=("rqs", "affine"))
    parser.add_argument("--cost-only", action="store_true", help="step costs only, no training")
    parser.add_argument("--budget", type=float, default=10.0, help="training seconds per method")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--chunk", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--variance-keys", type=int, default=64)
    args = parser.parse_args()
    print(f"# {jax.devices()[0].platform}, {vars(args)}")

    targets = [gmm_target(d) for d in args.dims]
    if args.funnel:
        targets.append(funnel_target(args.funnel))
    flows = [f"{kind} {t}" for kind in args.flows for t in args.transformers]
    print("\n| flow | target | fast/reparam cost | slow/fast cost | ms/step reparam, slow, fast |")
    print("|---|---|---|---|---|")
    all_rows = []
    for flow_name in flows:
        for name, d, log_p in targets:
            cost, rows = run_target(flow_name, d, log_p, args)
            ms = ", ".join(f"{1e3 * cost[m]:.2f}" for m in METHODS)
            print(
                f"| {flow_name} | {name} | {cost['fast_path'] / cost['reparam']:.2f} | "
                f"{cost['slow_path'] / cost['fast_path']:.2f} | {ms} |",
                flush=True,
            )
            all_rows.append((f"{flow_name}, {name}", rows))
    if args.cost_only:
        return
    print(
        f"\n| flow, target | method | steps in {args.budget:.0f}s | grad variance (trace) "
        "| reverse ESS | mean log w |"
    )
    print("|---|---|---|---|---|---|")
    for name, rows in all_rows:
        for m, _, steps, _, var, e, elbo in rows:
            print(f"| {name} | {m} | {steps} | {var:.3g} | {e:.3f} | {elbo:.3f} |")


if __name__ == "__main__":
    main()
