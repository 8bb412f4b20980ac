"""Score-function control variates and multi-sample objectives against NumPyro's TraceGraph_ELBO.

Two models on sklearn's bundled digits (8x8 images binarised at 8, the first ``--n`` images):

* ``mixture``: a Bernoulli mixture with point-estimated component logits; the only latent sites are
  the per-image assignments ``k_n`` (discrete).
* ``mixed``: the same mixture with a Gaussian prior on the component logits ``theta`` and a Gaussian
  guide for them (continuous, reparameterised), plus the discrete assignments.

For each estimator at ``K = 8`` particles it measures, at fixed parameters (the initial ones):

* gradient variance per site: the trace of the covariance, over independent keys, of the gradient
  of the guide parameters that feed the site (stateful baselines are first warmed up for
  ``--warmup`` evaluations at the same parameters, then held fixed);
* the largest |z| of the mean gradient of ``k``'s parameters against the exact gradient (Enumerate
  on the ``mixture`` model) as a check that the estimators agree;
* wall time (median of ``--repeats`` interleaved runs, compile excluded) and steps for Adam to reach
  a target ELBO: ``init + 0.9 (final - init)`` with ``final`` the ELBO reached by the
  enumerated estimator after ``--steps`` steps.

VIMCO estimates the gradient of a different objective (the IWELBO), so its variance is of that
gradient, not the ELBO's; its time to target is still measured on the ELBO.

Run::

    python benchmarks/objectives/bench_objectives.py            # as in RESULTS.md
    python benchmarks/objectives/bench_objectives.py --quick    # a fast smoke run
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from numpyro.infer import TraceGraph_ELBO
from sklearn.datasets import load_digits

import vigrad
from vigrad.estimators.control_variates import no_baseline
from vigrad.objectives.base import STATE_SITE

C = 10
K = 8


def digits(n: int) -> jnp.ndarray:
    x = load_digits().data[:n] > 8
    return jnp.asarray(x, jnp.float32)


# ---- models ---------------------------------------------------------------------------------


def mixture_model(x):
    n, d = x.shape
    theta = numpyro.param("theta", jnp.zeros((C, d)))
    mix = numpyro.param("mix_logits", jnp.zeros(C))
    with numpyro.plate("n", n):
        k = numpyro.sample("k", dist.Categorical(logits=mix))
        numpyro.sample("x", dist.Bernoulli(logits=theta[k]).to_event(1), obs=x)


def mixed_model(x):
    n, d = x.shape
    theta = numpyro.sample("theta", dist.Normal(0.0, 3.0).expand([C, d]).to_event(2))
    with numpyro.plate("n", n):
        k = numpyro.sample("k", dist.Categorical(logits=jnp.zeros(C)))
        numpyro.sample("x", dist.Bernoulli(logits=theta[k]).to_event(1), obs=x)


def assignment_guide(x):
    with numpyro.plate("n", x.shape[0]):
        numpyro.sample(
            "k", dist.Categorical(logits=numpyro.param("k_logits", jnp.zeros((x.shape[0], C))))
        )


def mixed_guide(x):
    loc = numpyro.param("theta_loc", jnp.zeros((C, x.shape[1])))
    log_scale = numpyro.param("theta_log_scale", jnp.full((C, x.shape[1]), -1.0))
    numpyro.sample("theta", dist.Normal(loc, jnp.exp(log_scale)).to_event(2))
    assignment_guide(x)


SITES = {
    "mixture": {"k": ("k_logits",)},
    "mixed": {"k": ("k_logits",), "theta": ("theta_loc", "theta_log_scale")},
}


def init_params(name: str, x, key):
    n, d = x.shape
    theta = 0.5 * jax.random.normal(key, (C, d))
    p = {"k_logits": jnp.zeros((n, C))}
    if name == "mixture":
        p.update(theta=theta, mix_logits=jnp.zeros(C))
    else:
        p.update(theta_loc=theta, theta_log_scale=jnp.full((C, d), -1.0))
    # Strongly typed arrays, so the compiled step is not traced again after the first update.
    return jax.tree.map(lambda a: jnp.asarray(np.asarray(a)), p)


def mixture_exact_elbo(p, x):
    """The mixture model's ELBO by enumeration (its only latent sites are the assignments)."""
    log_lik = (x @ jax.nn.log_sigmoid(p["theta"]).T) + ((1 - x) @ jax.nn.log_sigmoid(-p["theta"]).T)
    log_joint = jax.nn.log_softmax(p["mix_logits"]) + log_lik
    log_q = jax.nn.log_softmax(p["k_logits"])
    return jnp.sum(jnp.exp(log_q) * (log_joint - log_q))


# ---- estimators ---------------------------------------------------------------------------------


class RowLinear(eqx.Module):
    """A per-image linear baseline for the assignment sites: ``[N, D] -> [N]``."""

    w: jax.Array
    b: jax.Array

    def __call__(self, x):
        return x @ self.w + self.b


def estimators(x) -> dict[str, Callable[[], object]]:
    d = x.shape[1]
    learned = lambda: vigrad.Learned(RowLinear(jnp.zeros(d), jnp.zeros(())), x, 5e-2)
    score = lambda cv: {"k": vigrad.Score(control_variate=cv)}
    return {
        "TraceGraph_ELBO": lambda: TraceGraph_ELBO(num_particles=K),
        "Score": lambda: vigrad.ELBO(K, score(no_baseline())),
        "MovingAverage": lambda: vigrad.ELBO(K, score(vigrad.MovingAverage(0.9))),
        "LeaveOneOut": lambda: vigrad.ELBO(K, score(vigrad.LeaveOneOut())),
        "Learned": lambda: vigrad.ELBO(K, score(learned())),
        "VIMCO": lambda: vigrad.VIMCO(K, score(None)),
        "Enumerate": lambda: vigrad.ELBO(K, {"k": vigrad.Enumerate()}),
    }


def loss_fn(objective, model, guide, x):
    """``(key, params, state) -> (loss, state)`` for a vigrad or a NumPyro objective."""
    if isinstance(objective, vigrad.Objective):

        def f(key, params, state):
            out = objective.loss_with_mutable_state(
                key, {**params, STATE_SITE: state}, model, guide, x
            )
            return out["loss"], (out["mutable_state"] or {}).get(STATE_SITE, state)

        init = lambda key, params: objective.init_state(key, params, model, guide, x)
        return f, init

    f = lambda key, params, state: (objective.loss(key, params, model, guide, x), state)
    return f, lambda key, params: {}


# ---- measurements ---------------------------------------------------------------------------------


def gradient_samples(f, params, state, key, num):
    grad = jax.grad(lambda p, k: f(k, p, state)[0])
    return jax.jit(jax.vmap(lambda k: grad(params, k)))(jax.random.split(key, num))


def warm_state(f, params, state, key, steps):
    def body(s, k):
        return f(k, params, s)[1], None

    return jax.jit(lambda s: jax.lax.scan(body, s, jax.random.split(key, steps))[0])(state)


def variance_by_site(grads, sites):
    return {
        site: float(sum(jnp.sum(jnp.var(grads[n], axis=0, ddof=1)) for n in names))
        for site, names in sites.items()
    }


def max_z(grads, exact, names):
    zs = []
    for n in names:
        g = np.asarray(grads[n], np.float64)
        se = g.std(axis=0, ddof=1) / np.sqrt(g.shape[0])
        diff = np.abs(g.mean(axis=0) - np.asarray(exact[n]))
        zs.append(np.max(np.where(se > 0, diff / np.where(se > 0, se, 1), diff * 1e12)))
    return float(max(zs))


def make_chunk(f, optimizer, length):
    def chunk(params, opt_state, state, key, start):
        def body(carry, t):
            p, o, s = carry
            (loss, s), g = jax.value_and_grad(f, argnums=1, has_aux=True)(
                jax.random.fold_in(key, t), p, s
            )
            updates, o = optimizer.update(g, o, p)
            return (optax.apply_updates(p, updates), o, s), loss

        return jax.lax.scan(body, (params, opt_state, state), start + jnp.arange(length))

    return jax.jit(chunk)


class Trainer:
    """Adam on one estimator, compiled once and reused across repeats."""

    def __init__(self, f, init_state, chunk, lr):
        self.optimizer = optax.adam(lr)
        self.init_state, self.chunk = init_state, chunk
        self.run = make_chunk(f, self.optimizer, chunk)

    def __call__(self, params, key, evaluate, steps, target=None):
        """The ELBO after every chunk, the total time and (steps, seconds) to reach ``target``."""
        state = self.init_state(key, params)
        opt_state = self.optimizer.init(params)
        jax.block_until_ready(self.run(params, opt_state, state, key, 0))  # compile
        curve, elapsed, reached = [], 0.0, None
        for start in range(0, steps, self.chunk):
            t0 = time.perf_counter()
            (params, opt_state, state), _ = self.run(params, opt_state, state, key, start)
            jax.block_until_ready(params)
            elapsed += time.perf_counter() - t0
            value = float(evaluate(params))
            curve.append(value)
            if reached is None and target is not None and value >= target:
                reached = (start + self.chunk, elapsed)
        return curve, elapsed, reached


def bench_model(name, x, args, key):
    model, guide = (
        (mixture_model, assignment_guide) if name == "mixture" else (mixed_model, mixed_guide)
    )
    sites = SITES[name]
    params = init_params(name, x, jax.random.fold_in(key, 1))
    ests = estimators(x)
    if name == "mixture":
        evaluate = jax.jit(lambda p: mixture_exact_elbo(p, x))
    else:
        ev = vigrad.ELBO(64, {"k": vigrad.Enumerate()})
        evaluate = jax.jit(lambda p: -ev.loss(jax.random.key(123), p, model, guide, x))

    out = {"variance": {}, "max_z_vs_enumerate": {}, "time_to_target": {}}
    exact = None
    for est_name, make in ests.items():
        f, init = loss_fn(make(), model, guide, x)
        state = init(key, params)
        if args.warmup and est_name in ("MovingAverage", "Learned"):
            state = warm_state(f, params, state, jax.random.fold_in(key, 2), args.warmup)
        grads = gradient_samples(f, params, state, jax.random.fold_in(key, 3), args.samples)
        out["variance"][est_name] = variance_by_site(grads, sites)
        if est_name == "Enumerate":
            exact = jax.tree.map(lambda g: g.mean(axis=0), grads)
        out["_grads_" + est_name] = grads
    if name == "mixture":
        for est_name in ests:
            if est_name in ("Enumerate", "VIMCO"):
                continue
            out["max_z_vs_enumerate"][est_name] = max_z(
                out["_grads_" + est_name], exact, sites["k"]
            )
    for est_name in ests:
        del out["_grads_" + est_name]

    # Target: 90% of the way from the initial ELBO to the enumerated estimator's final ELBO.
    trainers = {
        n: Trainer(*loss_fn(make(), model, guide, x), args.chunk, args.lr)
        for n, make in ests.items()
    }
    curve, _, _ = trainers["Enumerate"](params, key, evaluate, args.steps)
    start_value = float(evaluate(params))
    target = start_value + 0.9 * (max(curve) - start_value)
    out["target"] = {"initial": start_value, "enumerate_final": max(curve), "target": target}
    times = {n: [] for n in ests}
    for _ in range(args.repeats):
        for est_name, trainer in trainers.items():
            curve, total, reached = trainer(params, key, evaluate, args.steps, target)
            times[est_name].append(
                {"reached": reached, "total": total, "final": curve[-1], "best": max(curve)}
            )
    for est_name, runs in times.items():
        reached = [r["reached"] for r in runs]
        out["time_to_target"][est_name] = {
            "steps": reached[0][0] if reached[0] else None,
            "median_s": float(np.median([r[1] for r in reached])) if all(reached) else None,
            "median_s_per_step": float(np.median([r["total"] for r in runs])) / args.steps,
            "final_elbo": runs[0]["final"],
        }
    return out


def table(name, res):
    lines = [f"### {name}", ""]
    sites = list(next(iter(res["variance"].values())))
    ref = res["variance"]["TraceGraph_ELBO"]
    head = "| estimator (K=8) | " + " | ".join(
        f"var `{s}` | ratio TraceGraph/this `{s}`" for s in sites
    )
    lines += [head + " |", "|" + "---|" * (1 + 2 * len(sites))]
    for est, v in res["variance"].items():
        cells = []
        for s in sites:
            ratio = ref[s] / v[s] if v[s] > 0 else float("inf")
            cells += [f"{v[s]:.4g}", f"{ratio:.3g}"]
        lines.append(f"| {est} | " + " | ".join(cells) + " |")
    if res["max_z_vs_enumerate"]:
        lines += ["", "max |z| of the mean `k` gradient against the enumerated (exact) gradient: "]
        lines.append(", ".join(f"{e} {z:.2f}" for e, z in res["max_z_vs_enumerate"].items()))
    t = res["target"]
    lines += [
        "",
        f"Target ELBO {t['target']:.2f} (initial {t['initial']:.2f}, enumerated final "
        f"{t['enumerate_final']:.2f}).",
        "",
        "| estimator | steps to target | median s to target | ratio TraceGraph/this | "
        "median ms/step | final ELBO |",
        "|---|---|---|---|---|---|",
    ]
    ref_t = res["time_to_target"]["TraceGraph_ELBO"]["median_s"]
    for est, r in res["time_to_target"].items():
        ratio = f"{ref_t / r['median_s']:.3g}" if (ref_t is not None and r["median_s"]) else "n/a"
        steps = r["steps"] if r["steps"] is not None else "not reached"
        secs = f"{r['median_s']:.3g}" if r["median_s"] is not None else "n/a"
        lines.append(
            f"| {est} | {steps} | {secs} | {ratio} | {1e3 * r['median_s_per_step']:.3g} | "
            f"{r['final_elbo']:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="number of digit images")
    parser.add_argument("--samples", type=int, default=500, help="gradient samples for variances")
    parser.add_argument("--warmup", type=int, default=200, help="baseline warm-up evaluations")
    parser.add_argument("--steps", type=int, default=1000, help="Adam steps per training run")
    parser.add_argument("--chunk", type=int, default=25, help="steps between ELBO evaluations")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing repeats")
    parser.add_argument("--lr", type=float, default=5e-2)
    parser.add_argument("--models", default="mixture,mixed")
    parser.add_argument("--json", default=None, help="write raw results here")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.samples, args.warmup, args.steps, args.chunk, args.repeats = (
            40, 50, 10, 50, 25, 1,
        )  # fmt: skip
    x = digits(args.n)
    results = {}
    for name in args.models.split(","):
        results[name] = bench_model(name, x, args, jax.random.key(0))
        print(table(name, results[name]), flush=True)
        print()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1, default=float)
    return results


if __name__ == "__main__":
    main()
