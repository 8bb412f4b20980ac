"""Does choosing estimators by measured variance x cost pay off?

For three small models, at parameters where a fit spends its time (the exact posterior, or after a
short warm-up fit), this script

1. runs ``select_estimators`` (default candidates, 256 estimates each) and records its table, its
   choice and the wall time the selection itself took (compilation included);
2. re-measures the default assignment (Reparam where reparameterisable, else Score) and the chosen
   one with a fresh seed, over every parameter: trace of the gradient covariance and time per
   estimate, the two assignments timed in interleaved rounds (median), and the ratio of their
   variance x time;
3. fits both assignments from the same start for the same number of steps, over several seeds,
   and compares the ELBO reached (mean of the loss over the last 10% of steps, negated).

Everything is measured in one run; the machine may be shared, so timings are medians over
interleaved rounds. It writes ``benchmarks/diagnostics/RESULTS.md``.

Usage::

    .venv/bin/python benchmarks/diagnostics/bench_select.py [--seeds 4] [--steps 1000]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import optax  # noqa: E402
from numpyro.infer.autoguide import AutoNormal  # noqa: E402

import vigrad  # noqa: E402
from vigrad.diagnostics import gradient_variance, select_estimators  # noqa: E402
from vigrad.diagnostics.select import estimator_name  # noqa: E402

jax.config.update("jax_enable_x64", True)
OUT = Path(__file__).with_name("RESULTS.md")


# -- models --------------------------------------------------------------------------------------

X_CONJ = jnp.asarray(np.random.default_rng(0).normal(1.5, 1.0, size=20))


def conj_model(x):
    z = numpyro.sample("z", dist.Normal(0.0, 1.0))
    with numpyro.plate("n", x.shape[0]):
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x)


def conj_guide(x):
    loc = numpyro.param("loc", 0.0)
    scale = numpyro.param("scale", 1.0, constraint=dist.constraints.positive)
    numpyro.sample("z", dist.Normal(loc, scale))


_rng = np.random.default_rng(1)
_labels = _rng.uniform(size=20) < 0.7
X_MIX = jnp.asarray(np.where(_labels, 1.0, -1.0) + _rng.normal(size=20))


def mix_model(x):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("n", x.shape[0]):
        c = numpyro.sample("c", dist.Bernoulli(logits=mu))
        numpyro.sample("x", dist.Normal(2.0 * c - 1.0, 1.0), obs=x)


def mix_guide(x):
    loc = numpyro.param("loc", 0.0)
    scale = numpyro.param("scale", 1.0, constraint=dist.constraints.positive)
    numpyro.sample("mu", dist.Normal(loc, scale))
    probs = numpyro.param(
        "probs", jnp.full(x.shape, 0.5), constraint=dist.constraints.unit_interval
    )
    with numpyro.plate("n", x.shape[0]):
        numpyro.sample("c", dist.Bernoulli(probs))


Y_SCHOOLS = jnp.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA_SCHOOLS = jnp.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def schools_model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("J", y.shape[0]):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("y", dist.Normal(theta, SIGMA_SCHOOLS), obs=y)


schools_guide = AutoNormal(schools_model)


# -- measurements --------------------------------------------------------------------------------


def warm_params(model, guide, data, steps):
    result = vigrad.fit(
        model,
        guide,
        vigrad.ELBO(),
        optax.adam(0.05),
        steps,
        jax.random.key(100),
        data,
        progress_bar=False,
    )
    return result.params


def validate(model, guide, params, data, chosen, num_samples, rounds=7):
    stats = {}
    for label, estimators in (("default", {}), ("chosen", chosen)):
        stats[label] = gradient_variance(
            model,
            guide,
            params,
            estimators,
            data,
            num_samples=num_samples,
            rng_key=jax.random.key(7),
        )
    times = {label: [] for label in stats}
    for _ in range(rounds):
        for label, s in stats.items():
            times[label].append(s.timer(50))
    out = {}
    for label, s in stats.items():
        out[label] = (s.total_variance(), statistics.median(times[label]))
    return out


def fit_elbo(model, guide, data, estimators, seeds, steps, lr):
    objective = vigrad.ELBO(estimators=estimators)
    optimizer = optax.adam(lr)
    finals = []
    for seed in range(seeds):
        result = vigrad.fit(
            model,
            guide,
            objective,
            optimizer,
            steps,
            jax.random.key(seed),
            data,
            progress_bar=False,
        )
        tail = result.losses[-max(1, steps // 10) :]
        finals.append(-float(np.mean(tail)))
    return np.asarray(finals)


def fmt_map(estimators):
    return ", ".join(f"{k}={estimator_name(v)}" for k, v in sorted(estimators.items())) or "-"


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--validate-samples", type=int, default=1000)
    args = parser.parse_args(argv)

    cases = [
        ("conjugate Gaussian, at the exact posterior", conj_model, conj_guide, X_CONJ, None),
        ("Bernoulli-latent mixture, after 300 warm-up steps", mix_model, mix_guide, X_MIX, 300),
        (
            "eight schools (AutoNormal), after 500 warm-up steps",
            schools_model,
            schools_guide,
            Y_SCHOOLS,
            500,
        ),
    ]
    lines = [
        "# Choosing estimators by measured variance x cost",
        "",
        "Command (one run, all numbers below from it):",
        "",
        "    "
        + " ".join([".venv/bin/python", "benchmarks/diagnostics/bench_select.py", *sys.argv[1:]]),
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other work, "
        f"jax {jax.__version__} (CPU, float64, single-threaded XLA). Timings are medians over "
        "interleaved rounds; the absolute times are dominated by Python dispatch for these tiny "
        "models, so read the ratios.",
        "",
    ]
    summary = [
        "| model | chosen | selection took (s) | default var | chosen var | time ratio chosen/default | (var x time) default / chosen | ELBO default | ELBO chosen |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    details = []
    for title, model, guide, data, warm in cases:
        print(f"== {title}", flush=True)
        if warm is None:
            n = data.shape[0]
            params = {"loc": jnp.sum(data) / (n + 1), "scale": jnp.sqrt(1.0 / (n + 1))}
        else:
            params = warm_params(model, guide, data, warm)
        start = time.perf_counter()
        selection = select_estimators(
            model, guide, params, data, num_samples=args.num_samples, rng_key=jax.random.key(3)
        )
        took = time.perf_counter() - start
        print(selection.comparison, flush=True)
        print(selection.report, flush=True)
        val = validate(model, guide, params, data, selection.estimators, args.validate_samples)
        (var_d, sec_d), (var_c, sec_c) = val["default"], val["chosen"]
        gain = (var_d * sec_d) / (var_c * sec_c) if var_c * sec_c > 0 else float("inf")
        lr = 0.01 if warm is None else 0.05
        elbo_d = fit_elbo(model, guide, data, {}, args.seeds, args.steps, lr)
        elbo_c = fit_elbo(model, guide, data, selection.estimators, args.seeds, args.steps, lr)
        se = lambda a: a.std(ddof=1) / np.sqrt(len(a)) if len(a) > 1 else float("nan")
        summary.append(
            f"| {title} | {fmt_map(selection.estimators)} | {took:.1f} | {var_d:.3g} | {var_c:.3g} "
            f"| {sec_c / sec_d:.2f} | {gain:.3g} | {elbo_d.mean():.3f} ± {se(elbo_d):.3f} "
            f"| {elbo_c.mean():.3f} ± {se(elbo_c):.3f} |"
        )
        details += [
            f"## {title}",
            "",
            "```",
            str(selection.comparison),
            "",
            selection.report,
            "```",
            "",
        ]
    lines += [
        "## Summary",
        "",
        f"`default`: Reparam where reparameterisable, else Score. `chosen`: the selection "
        f"({args.num_samples} estimates per candidate, seed 3). `var`: trace of the covariance "
        f"of one gradient estimate over all parameters, re-measured with {args.validate_samples} "
        "fresh estimates (seed 7). The ELBO columns: mean ± standard error over "
        f"{args.seeds} fits of {args.steps} Adam steps from the guide's initial values (learning "
        "rate 0.01 for the conjugate model, 0.05 otherwise), each fit's ELBO being the mean of "
        "its last 10% of step estimates.",
        "",
        *summary,
        "",
        *details,
    ]
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(summary))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
