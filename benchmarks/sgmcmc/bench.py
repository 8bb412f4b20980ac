"""SG-MCMC benchmark: Bayesian logistic regression, N = 100,000.

Part 1, speed: steps per second of the compiled sampling loop, vigrad against BlackJAX's ``sgld``
and ``sghmc`` on the same model, data, batch size and step size, in one process. The runs are
interleaved and repeated; the table reports medians and the vigrad / BlackJAX ratio.

Part 2, accuracy: error of the posterior mean and standard deviation against a long NUTS run, and
wall time (compilation included), for SGLD, pSGLD, SGHMC and SGLD-CV.

    .venv/bin/python benchmarks/sgmcmc/bench.py [--quick] [--speed-only] [--repeats R]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS

import vigrad.sgmcmc as sg
from vigrad.infer import driver
from vigrad.infer.static import split_static
from vigrad.sgmcmc.minibatch import Problem, Target
from vigrad.sgmcmc.sample import constant_step_size, sample_step

N, D, BATCH = 100_000, 10, 256
SGHMC_L = 10


def make_data(key):
    kx, kw, ky = jax.random.split(key, 3)
    x = jax.random.normal(kx, (N, D))
    w = jax.random.normal(kw, (D,))
    y = jax.random.bernoulli(ky, jax.nn.sigmoid(x @ w)).astype(jnp.float32)
    return x, y


def model(x, y):
    w = numpyro.sample("w", dist.Normal(jnp.zeros(D), 1.0).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        logits = numpyro.subsample(x, event_dim=1) @ w
        numpyro.sample("y", dist.Bernoulli(logits=logits), obs=numpyro.subsample(y, event_dim=0))


def vigrad_loop(kernel, x, y, steps, key):
    """The run driver's compiled chunk that :func:`vigrad.sgmcmc.sample` runs (private API),
    built the same way, one chain: no feed, ``steps`` steps from step 0, every draw kept."""
    target = Target(model, (x, y), {}, key)
    dynamic, static_key = split_static((x, y), {})
    problem = Problem(target, dynamic, static_key, BATCH)
    carry = jax.vmap(kernel.init)({"w": jnp.zeros((1, D))})
    keys = jax.random.split(key, 1)
    i32 = lambda v: jnp.asarray(v, jnp.int32)  # noqa: E731
    static = kernel.static()
    chunk = driver.compiled_chunk(
        ("vigrad.sgmcmc.sample", static), functools.partial(sample_step, static)
    )
    consts = (problem, keys, constant_step_size(kernel), ())

    def go():
        out = chunk(carry, consts, None, i32(0), i32(steps), steps, 1)
        return jax.block_until_ready(out[1]["w"])

    return go


def blackjax_loop(algorithm, x, y, steps, key, step_size, **step_kwargs):
    """BlackJAX's kernel scanned over steps, minibatches drawn by index inside the scan."""

    def logprior(w):
        return dist.Normal(0.0, 1.0).log_prob(w).sum()

    def loglik(w, point):
        xi, yi = point
        return dist.Bernoulli(logits=xi @ w).log_prob(yi)

    grad = blackjax.sgmcmc.gradients.grad_estimator(logprior, loglik, N)
    alg = algorithm(grad, **step_kwargs)

    @jax.jit
    def run(key, x, y):
        def body(position, k):
            kb, ks = jax.random.split(k)
            idx = jax.random.randint(kb, (BATCH,), 0, N)
            position = alg.step(ks, position, (x[idx], y[idx]), step_size)
            return position, position

        return jax.lax.scan(body, alg.init(jnp.zeros(D)), jax.random.split(key, steps))[1]

    def go():
        return jax.block_until_ready(run(key, x, y))

    return go


def speed(x, y, steps, repeats):
    key = jax.random.PRNGKey(1)
    eps = 1e-6
    loops = {
        "vigrad SGLD": vigrad_loop(sg.SGLD(eps), x, y, steps, key),
        # BlackJAX's step size h is half of vigrad's ε (h = ε/2, noise √(2h)).
        "blackjax sgld": blackjax_loop(blackjax.sgld, x, y, steps, key, eps / 2),
        # BlackJAX has no pSGLD: vigrad's pSGLD (RMSprop preconditioner, more work per step) is
        # compared with BlackJAX's plain sgld, the cheapest BlackJAX step.
        "vigrad pSGLD": vigrad_loop(sg.pSGLD(3e-3), x, y, steps, key),
        "vigrad SGHMC": vigrad_loop(sg.SGHMC(1e-4, friction=200.0), x, y, steps, key),
        # BlackJAX's sghmc redraws the momentum at every call and runs L integration steps with
        # one minibatch; with L = 1 the gradient never reaches the output and is compiled away,
        # so L = 10 calls (10 gradients each) are compared with 10x as many vigrad steps.
        "blackjax sghmc": blackjax_loop(
            blackjax.sghmc, x, y, steps // SGHMC_L, key, 1e-4, num_integration_steps=SGHMC_L
        ),
    }
    compile_s = {}
    for name, go in loops.items():
        t = time.perf_counter()
        go()
        compile_s[name] = time.perf_counter() - t
    times = {name: [] for name in loops}
    cpu = {name: [] for name in loops}
    for _ in range(repeats):
        for name, go in loops.items():
            t, c = time.perf_counter(), time.process_time()
            go()
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    med_cpu = {name: statistics.median(ts) for name, ts in cpu.items()}
    print(f"\n## Speed: {steps} steps, batch {BATCH}, one chain, median of {repeats} interleaved")
    print(
        "| sampler | first call (s, compile+run) | median run (s) | median CPU (s) "
        "| gradient steps/s (wall) | gradient steps/s (CPU) |"
    )
    print("|---|---|---|---|---|---|")
    for name in loops:
        print(
            f"| {name} | {compile_s[name]:.2f} | {med[name]:.3f} | {med_cpu[name]:.3f} "
            f"| {steps / med[name]:,.0f} | {steps / med_cpu[name]:,.0f} |"
        )
    pairs = [
        ("vigrad SGLD", "blackjax sgld"),
        ("vigrad pSGLD", "blackjax sgld"),
        ("vigrad SGHMC", "blackjax sghmc"),
    ]
    for a, b in pairs:
        # The ratio of each interleaved repeat, then their median: load that changes between
        # repeats affects both members of a pair alike. CPU time (all threads of this process) is
        # less sensitive to other jobs on a shared machine than wall time.
        for label, table in [("wall", times), ("CPU", cpu)]:
            ratios = sorted(tb / ta for ta, tb in zip(table[a], table[b], strict=True))
            spread = ", ".join(f"{r:.2f}" for r in ratios)
            print(
                f"{a} / {b} steps-per-second ratio ({label} time): median "
                f"{statistics.median(ratios):.2f} (per repeat, sorted: {spread})"
            )


def accuracy(x, y, num_samples, num_warmup, quick):
    t = time.perf_counter()
    mcmc = MCMC(
        NUTS(model),
        num_warmup=300 if quick else 1000,
        num_samples=500 if quick else 2000,
        progress_bar=False,
    )
    mcmc.run(jax.random.PRNGKey(2), x, y)
    ref = np.asarray(mcmc.get_samples()["w"])
    nuts_s = time.perf_counter() - t
    ref_mean, ref_sd = ref.mean(0), ref.std(0)
    print(f"\n## Accuracy against NUTS ({len(ref)} draws, {nuts_s:.1f} s)")
    print(
        f"{num_samples} steps after {num_warmup} warm-up steps from w = U(-2, 2), batch {BATCH}, "
        "4 chains, thinning 10; wall time includes compilation (and SGLD-CV's mode search)."
    )
    print("| kernel | wall (s) | max abs(mean error) / NUTS sd | max abs(sd ratio - 1) |")
    print("|---|---|---|---|")
    kernels = {
        "SGLD(1e-6)": sg.SGLD(1e-6),
        "pSGLD(3e-3)": sg.pSGLD(3e-3),
        "SGHMC(1e-4, C=200)": sg.SGHMC(1e-4, friction=200.0),
        "SGLD-CV(1e-5)": sg.SGLDCV(1e-5, mode_steps=2000),
    }
    for name, kernel in kernels.items():
        t = time.perf_counter()
        r = sg.sample(
            model,
            kernel,
            num_samples,
            BATCH,
            4,
            jax.random.PRNGKey(3),
            x,
            y,
            num_warmup=num_warmup,
            thinning=10,
            progress_bar=False,
        )
        w = np.asarray(r.samples["w"]).reshape(-1, D)
        wall = time.perf_counter() - t
        mean_err = np.max(np.abs(w.mean(0) - ref_mean) / ref_sd)
        sd_err = np.max(np.abs(w.std(0) / ref_sd - 1))
        print(f"| {name} | {wall:.1f} | {mean_err:.3f} | {sd_err:.3f} |")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer steps, for a smoke run")
    parser.add_argument("--speed-only", action="store_true", help="skip the accuracy part")
    parser.add_argument("--repeats", type=int, default=None, help="speed repeats (default 7)")
    opts = parser.parse_args()
    x, y = make_data(jax.random.PRNGKey(0))
    print(f"jax {jax.__version__}, blackjax {blackjax.__version__}, devices {jax.devices()}")
    repeats = opts.repeats or (3 if opts.quick else 7)
    speed(x, y, steps=2000 if opts.quick else 20_000, repeats=repeats)
    if opts.speed_only:
        return
    accuracy(
        x,
        y,
        num_samples=2000 if opts.quick else 40_000,
        num_warmup=2000 if opts.quick else 10_000,
        quick=opts.quick,
    )


if __name__ == "__main__":
    main()
