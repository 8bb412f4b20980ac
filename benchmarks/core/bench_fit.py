"""Speed of ``vigrad.fit`` against a hand-written JAX loop and NumPyro's ``Trace_ELBO``.

Two problems, each with a mean-field Normal guide and the default estimator (``vigrad.ELBO()``:
Reparam, one particle), optimised with ``optax.adam``:

* ``logreg``: Bayesian logistic regression, N = 10,000 generated examples, D = 50 features, weights
  and bias;
* ``schools``: eight schools, non-centred (``tau`` has a LogNormal guide).

Contenders, all stepping inside ``jit`` + ``lax.scan``:

* ``jax``: the same loop written by hand (log joint minus log q with the reparameterisation trick);
* ``numpyro``: ``SVI(model, guide, adam, Trace_ELBO()).update`` inside ``lax.scan``;
* ``vigrad``: ``vigrad.fit(..., chunk_size=steps, progress_bar=False)``, a whole call timed;
* ``vigrad-chunk``: only the compiled chunk that ``vigrad.fit`` runs (a private function, timed to
  split the call into its compiled part and its per-call Python part).

Table 1 (steady state): every contender is warmed up once (compiles), then each repetition times a
full run of ``--steps`` steps of every contender in turn; medians over repetitions. Table 2 (end to
end): one fresh Python process per run (``vigrad.fit`` vs ``SVI.run``), compile included, so no
compile cache is shared; JAX's persistent compilation cache is off.

Usage::

    .venv/bin/python benchmarks/core/bench_fit.py            # both tables
    .venv/bin/python benchmarks/core/bench_fit.py --quick    # fewer steps and repetitions
    .venv/bin/python benchmarks/core/bench_fit.py --table steady --profile

Threads are pinned before JAX is imported (``--threads``, default 1: one XLA CPU thread), the same for
every contender and every subprocess.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import time


def _xla_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "")
    if threads == 1:
        flags += " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    env["XLA_FLAGS"] = flags.strip()
    env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="300 steps, 3 repetitions, 1 subprocess")
    p.add_argument("--steps", type=int, default=None, help="steps per run (default 2000)")
    p.add_argument("--reps", type=int, default=None, help="repetitions of table 1 (default 11)")
    p.add_argument("--e2e-reps", type=int, default=None, help="processes per cell (default 3)")
    p.add_argument("--threads", type=int, default=1, choices=(1, 2))
    p.add_argument("--models", default="logreg,schools")
    p.add_argument("--table", default="all", choices=("all", "steady", "e2e"))
    p.add_argument("--profile", action="store_true", help="also break down one vigrad.fit call")
    p.add_argument("--worker", nargs=2, metavar=("CONTENDER", "MODEL"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.steps = args.steps or (300 if args.quick else 2000)
    args.reps = args.reps or (3 if args.quick else 11)
    args.e2e_reps = args.e2e_reps or (1 if args.quick else 3)
    return args


ARGS = _parse_args()
os.environ.update(_xla_env(ARGS.threads))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import optax  # noqa: E402
from jax.scipy.stats import norm  # noqa: E402
from numpyro.infer import SVI, Trace_ELBO  # noqa: E402

import vigrad  # noqa: E402
from vigrad.random import unrolled_key_derivation  # noqa: E402

LR = 1e-2
SEED = 0

# --------------------------------------------------------------------------------------------------
# Problems: data, NumPyro model and guide, and the hand-written loss on the same parameters.
# --------------------------------------------------------------------------------------------------

N, D = 10_000, 50


def logreg_data() -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(N, D)).astype(np.float32)
    w = rng.normal(size=D).astype(np.float32) / np.sqrt(D)
    y = (rng.uniform(size=N) < 1 / (1 + np.exp(-(x @ w + 0.5)))).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(y)


def logreg_model(x, y):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([D]).to_event(1))
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=x @ w + b), obs=y)


def logreg_guide(x, y):
    w_loc = numpyro.param("w_loc", jnp.zeros(D))
    w_scale = numpyro.param("w_scale", jnp.full(D, 0.1), constraint=dist.constraints.positive)
    b_loc = numpyro.param("b_loc", jnp.array(0.0))
    b_scale = numpyro.param("b_scale", jnp.array(0.1), constraint=dist.constraints.positive)
    numpyro.sample("w", dist.Normal(w_loc, w_scale).to_event(1))
    numpyro.sample("b", dist.Normal(b_loc, b_scale))


def logreg_init() -> dict:
    return {
        "w_loc": jnp.zeros(D),
        "w_log_scale": jnp.full(D, jnp.log(0.1)),
        "b_loc": jnp.array(0.0),
        "b_log_scale": jnp.array(jnp.log(0.1)),
    }


def logreg_loss(p, key, x, y):
    """Negative one-sample ELBO: -(log p(y, w, b) - log q(w, b)) at a reparameterised draw."""
    return logreg_loss_keys(p, jax.random.split(key), x, y)


def logreg_loss_keys(p, keys, x, y):
    k_w, k_b = keys
    w_scale, b_scale = jnp.exp(p["w_log_scale"]), jnp.exp(p["b_log_scale"])
    w = p["w_loc"] + w_scale * jax.random.normal(k_w, (D,))
    b = p["b_loc"] + b_scale * jax.random.normal(k_b)
    logits = x @ w + b
    log_lik = jnp.sum(y * logits - jax.nn.softplus(logits))
    log_prior = jnp.sum(norm.logpdf(w)) + norm.logpdf(b)
    log_q = jnp.sum(norm.logpdf(w, p["w_loc"], w_scale)) + norm.logpdf(b, p["b_loc"], b_scale)
    return -(log_lik + log_prior - log_q)


J = 8
SCHOOLS_Y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0], np.float32)
SCHOOLS_SIGMA = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0], np.float32)


def schools_data() -> tuple[jax.Array, jax.Array]:
    return jnp.asarray(SCHOOLS_SIGMA), jnp.asarray(SCHOOLS_Y)


def schools_model(sigma, y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("school", J):
        theta_t = numpyro.sample("theta_t", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(mu + tau * theta_t, sigma), obs=y)


def schools_guide(sigma, y):
    positive = dist.constraints.positive
    mu_loc = numpyro.param("mu_loc", jnp.array(0.0))
    mu_scale = numpyro.param("mu_scale", jnp.array(1.0), constraint=positive)
    tau_loc = numpyro.param("tau_loc", jnp.array(0.0))
    tau_scale = numpyro.param("tau_scale", jnp.array(1.0), constraint=positive)
    th_loc = numpyro.param("th_loc", jnp.zeros(J))
    th_scale = numpyro.param("th_scale", jnp.ones(J), constraint=positive)
    numpyro.sample("mu", dist.Normal(mu_loc, mu_scale))
    numpyro.sample("tau", dist.LogNormal(tau_loc, tau_scale))
    with numpyro.plate("school", J):
        numpyro.sample("theta_t", dist.Normal(th_loc, th_scale))


def schools_init() -> dict:
    return {
        "mu_loc": jnp.array(0.0),
        "mu_log_scale": jnp.array(0.0),
        "tau_loc": jnp.array(0.0),
        "tau_log_scale": jnp.array(0.0),
        "th_loc": jnp.zeros(J),
        "th_log_scale": jnp.zeros(J),
    }


def schools_loss(p, key, sigma, y):
    return schools_loss_keys(p, jax.random.split(key, 3), sigma, y)


def schools_loss_keys(p, keys, sigma, y):
    k_mu, k_tau, k_th = keys
    mu_s, tau_s, th_s = (jnp.exp(p[k]) for k in ("mu_log_scale", "tau_log_scale", "th_log_scale"))
    mu = p["mu_loc"] + mu_s * jax.random.normal(k_mu)
    log_tau = p["tau_loc"] + tau_s * jax.random.normal(k_tau)
    tau = jnp.exp(log_tau)
    theta_t = p["th_loc"] + th_s * jax.random.normal(k_th, (J,))
    # HalfCauchy(5) density on tau > 0: 2 / (pi * 5 * (1 + (tau / 5)^2)).
    log_p = (
        norm.logpdf(mu, 0.0, 5.0)
        + jnp.log(2.0 / (jnp.pi * 5.0))
        - jnp.log1p((tau / 5.0) ** 2)
        + jnp.sum(norm.logpdf(theta_t))
        + jnp.sum(norm.logpdf(y, mu + tau * theta_t, sigma))
    )
    log_q = (
        norm.logpdf(mu, p["mu_loc"], mu_s)
        + norm.logpdf(log_tau, p["tau_loc"], tau_s)
        - log_tau
        + jnp.sum(norm.logpdf(theta_t, p["th_loc"], th_s))
    )
    return -(log_p - log_q)


PROBLEMS = {
    "logreg": dict(
        title=f"Bayesian logistic regression (N={N:,}, D={D})",
        data=logreg_data,
        model=logreg_model,
        guide=logreg_guide,
        init=logreg_init,
        loss=logreg_loss,
        loss_keys=logreg_loss_keys,
        num_sites=2,
    ),
    "schools": dict(
        title="Eight schools, non-centred",
        data=schools_data,
        model=schools_model,
        guide=schools_guide,
        init=schools_init,
        loss=schools_loss,
        loss_keys=schools_loss_keys,
        num_sites=3,
    ),
}

# --------------------------------------------------------------------------------------------------
# Contenders: each builder returns ``run()`` that executes a full run and returns its losses.
# --------------------------------------------------------------------------------------------------

OPTIMIZER = optax.adam(LR)  # one object: vigrad.fit caches its compiled chunk on it
OBJECTIVE = vigrad.ELBO()


def build_jax(prob: dict, data: tuple, steps: int):
    loss = prob["loss"]

    @jax.jit
    def train(params, key, *data):
        opt_state = OPTIMIZER.init(params)

        def step(carry, t):
            params, opt_state = carry
            value, grads = jax.value_and_grad(loss)(params, jax.random.fold_in(key, t), *data)
            updates, opt_state = OPTIMIZER.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), value

        (params, _), losses = jax.lax.scan(step, (params, opt_state), jnp.arange(steps))
        return params, losses

    params0, key = prob["init"](), jax.random.key(SEED)
    return lambda: jax.block_until_ready(train(params0, key, *data))[1]


def build_numpyro(prob: dict, data: tuple, steps: int):
    svi = SVI(prob["model"], prob["guide"], OPTIMIZER, Trace_ELBO())
    state0 = svi.init(jax.random.key(SEED), *data)

    @jax.jit
    def train(state, *data):
        return jax.lax.scan(lambda s, _: svi.update(s, *data), state, None, length=steps)

    return lambda: jax.block_until_ready(train(state0, *data))[1]


def build_vigrad(prob: dict, data: tuple, steps: int):
    def run():
        result = vigrad.fit(
            prob["model"],
            prob["guide"],
            OBJECTIVE,
            OPTIMIZER,
            steps,
            jax.random.key(SEED),
            *data,
            chunk_size=steps,
            progress_bar=False,
        )
        jax.block_until_ready(result.params)
        return result.losses

    return run


def vigrad_chunk_inputs(prob: dict, data: tuple, steps: int):
    """The compiled chunk ``vigrad.fit`` calls, with the inputs it passes (private API)."""
    from vigrad.infer import fit as fit_mod
    from vigrad.infer.static import split_static

    dynamic, static_key = split_static(data, {})
    init_key, base_key = jax.random.split(jax.random.key(SEED))
    params_u, cons = fit_mod.init_params(init_key, prob["model"], prob["guide"], data, {})
    cons_key = tuple((n, fit_mod._Same(cons[n])) for n in sorted(cons))
    obj_state = OBJECTIVE.init_state(
        init_key, fit_mod._constrain(params_u, cons_key), prob["model"], prob["guide"], *data
    )
    carry = (params_u, OPTIMIZER.init(params_u), obj_state)
    chunk = _fit_chunk(prob, static_key, cons_key, steps)
    return chunk, _chunk_args(carry, base_key, dynamic, steps)


def _fit_chunk(prob: dict, static_key: tuple, cons_key: tuple, steps: int):
    """The run driver's compiled chunk of fit's step (private API), its chunk size and thinning
    fixed, so it is called with the traced arguments of :func:`_chunk_args` only."""
    from vigrad.infer import driver
    from vigrad.infer import fit as fit_mod

    parts = (prob["model"], prob["guide"], OBJECTIVE, OPTIMIZER, static_key, cons_key)
    build = functools.partial(fit_mod._fit_step, *parts)
    chunk = driver.compiled_chunk(("vigrad.fit", *parts, None), build)
    return jax.jit(lambda *args: chunk(*args, steps, 1))


def _chunk_args(carry: tuple, base_key, dynamic, steps: int) -> tuple:
    """The driver's traced chunk arguments: carry, constants, no feed, first step, trip count."""
    i32 = functools.partial(jnp.asarray, dtype=jnp.int32)
    return (carry, (base_key, dynamic), None, i32(0), i32(steps))


def build_vigrad_chunk(prob: dict, data: tuple, steps: int):
    chunk, inputs = vigrad_chunk_inputs(prob, data, steps)
    return lambda: jax.block_until_ready(chunk(*inputs))[1]


CONTENDERS = {
    "jax": ("hand-written JAX", build_jax),
    "numpyro": ("NumPyro Trace_ELBO (SVI.update in lax.scan)", build_numpyro),
    "vigrad": ("vigrad.fit, ELBO() (whole call)", build_vigrad),
    "vigrad-chunk": ("vigrad.fit's compiled chunk only", build_vigrad_chunk),
}


def _timed(fn) -> tuple[float, np.ndarray]:
    gc.collect()
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, np.asarray(out)


def steady_table(names: list[str], steps: int, reps: int) -> list[str]:
    lines = [
        f"steps per run = {steps}, repetitions = {reps}; per-step time = median run time / steps.",
        "",
    ]
    for name in names:
        prob = PROBLEMS[name]
        data = prob["data"]()
        runs, times, tail = {}, {}, {}
        for c, (_, build) in CONTENDERS.items():
            runs[c] = build(prob, data, steps)
            _, losses = _timed(runs[c])  # warm-up: compile
            tail[c] = float(np.mean(losses[-max(1, steps // 10) :]))
            times[c] = []
        for _ in range(reps):
            for c in CONTENDERS:  # interleaved, so drift hits every contender alike
                times[c].append(_timed(runs[c])[0])
        base = statistics.median(times["jax"])
        lines += [
            f"### {prob['title']}",
            "",
            "| contender | median per step (us) | ratio to hand-written JAX | min per step (us) "
            "| ratio of mins | mean loss, last 10% of steps |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        base_min = min(times["jax"])
        for c, (label, _) in CONTENDERS.items():
            med, lo = statistics.median(times[c]), min(times[c])
            lines.append(
                f"| {label} | {1e6 * med / steps:.2f} | {med / base:.3f} | {1e6 * lo / steps:.2f} "
                f"| {lo / base_min:.3f} | {tail[c]:.2f} |"
            )
        lines.append("")
        print("\n".join(lines[-len(CONTENDERS) - 5 :]), flush=True)
    return lines


def _timer_wrap(fn, bucket: list):
    def wrapped(*a, **k):
        t0 = time.perf_counter()
        out = fn(*a, **k)
        jax.block_until_ready(out)
        bucket.append(time.perf_counter() - t0)
        return out

    return wrapped


def call_breakdown(names: list[str], steps: int, reps: int) -> list[str]:
    """Where one warm ``vigrad.fit`` call spends its time, by wrapping its helpers with timers."""
    from vigrad.infer import driver
    from vigrad.infer import fit as fit_mod

    lines = [
        f"### Breakdown of one warm vigrad.fit call ({steps} steps, one chunk; medians over "
        f"{reps} calls, ms)",
        "",
        "| problem | whole call | compiled chunk (incl. dispatch) | init_params "
        "| objective.init_state (re-trace) | everything else |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    originals = (driver.compiled_chunk, fit_mod.init_params)
    for name in names:
        prob = PROBLEMS[name]
        data = prob["data"]()
        objective = vigrad.ELBO()  # its own instance: its init_state is wrapped below
        buckets = {k: [] for k in ("chunk", "ip", "is")}

        def compiled_chunk(*a, _orig=originals[0], _b=buckets["chunk"]):
            return _timer_wrap(_orig(*a), _b)

        driver.compiled_chunk = compiled_chunk
        fit_mod.init_params = _timer_wrap(originals[1], buckets["ip"])
        objective.init_state = _timer_wrap(objective.init_state, buckets["is"])
        totals = []
        try:
            for i in range(reps + 1):
                for b in buckets.values():
                    b.clear()
                gc.collect()
                t0 = time.perf_counter()
                r = vigrad.fit(
                    prob["model"],
                    prob["guide"],
                    objective,
                    OPTIMIZER,
                    steps,
                    jax.random.key(SEED),
                    *data,
                    chunk_size=steps,
                    progress_bar=False,
                )
                jax.block_until_ready(r.params)
                if i:  # the first call compiles
                    totals.append((time.perf_counter() - t0, *(sum(b) for b in buckets.values())))
        finally:
            driver.compiled_chunk, fit_mod.init_params = originals
        med = [1e3 * statistics.median(col) for col in zip(*totals, strict=True)]
        rest = med[0] - sum(med[1:])
        lines.append(
            f"| {name} | {med[0]:.1f} | {med[1]:.1f} | {med[2]:.1f} | {med[3]:.1f} | {rest:.1f} |"
        )
    lines.append("")
    print("\n".join(lines), flush=True)
    return lines


def _hlo_body_stats(hlo_text: str) -> tuple[int, int]:
    """(operations executed per step, PRNG while loops per step) in the compiled scan body.

    Counts the non-trivial instructions XLA:CPU runs one by one (a fusion is one), following
    ``call`` into the called computation and multiplying a ``while`` body by its known trip count.
    On CPU every random-bits call (split, fold_in, normal) lowers to a rolled threefry loop of 5
    rounds, so the inner while loops count the PRNG calls of a step.
    """
    comps, cur = {}, None
    for line in re.sub(r"/\*.*?\*/", "", hlo_text).splitlines():
        m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if m:
            cur = comps.setdefault(m.group(1), [])
            continue
        if line.startswith("}"):
            cur = None
        elif cur is not None and " = " in line:
            cur.append(line)
    opcode = re.compile(r"=\s+(?:\([^=]*?\)|\S+)\s+([\w\-]+)\(")
    trivial = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant"}

    def count(name: str) -> tuple[int, int]:
        ops = loops = 0
        for ln in comps[name]:
            m = opcode.search(ln)
            kind = m.group(1) if m else ""
            if kind == "call":
                sub = count(re.search(r"to_apply=%?([\w.\-]+)", ln).group(1))
                ops, loops = ops + sub[0], loops + sub[1]
            elif kind == "while":
                trips = re.search(r'known_trip_count":\{"n":"(\d+)"', ln)
                trips = int(trips.group(1)) if trips else 1
                body = count(re.search(r"body=%?([\w.\-]+)", ln).group(1))
                cond = count(re.search(r"condition=%?([\w.\-]+)", ln).group(1))
                ops += trips * (body[0] + cond[0])
                loops += 1 + body[1]
            elif kind not in trivial:
                ops += 1
        return ops, loops

    outer = []
    for lines_ in comps.values():
        for ln in lines_:
            m = re.search(r" while\(.*body=%?([\w.\-]+)", ln)
            if m:
                outer.append(count(m.group(1)))
    return max(outer)  # the scan over steps contains all the others


def build_variant(prob: dict, data: tuple, steps: int, keys: str, guard: str):
    """The hand-written loop plus, one at a time, what ``vigrad.fit``'s step adds.

    keys="vigrad": the PRNG calls of vigrad's step (fold_in, split into particles, split into
    guide/model keys, one seed split per guide site) instead of fold_in + one split;
    keys="vigrad-unrolled": the same calls in unrolled Threefry rounds with JAX's keys
    (``vigrad.random.UNROLLED_KEY_DERIVATION``), as ``vigrad.fit`` makes them;
    keys="seed": only what NumPyro's ``seed`` handler needs (fold_in, one split per guide site);
    guard="where": the NaN/inf check of the loss and every gradient and the ``where`` that keeps
    the last finite carry; guard="detect": the same check recording only the first bad step (no
    ``where`` on the carry; the last finite state is recovered by re-running the chunk up to that
    step, which is deterministic because step ``t`` uses ``fold_in(key, t)``), as vigrad does;
    guard="detect+store": the same, with the check also kept as a per-step output, as vigrad's
    driver did before: XLA then recomputes the check's whole scalar chain for each reader.
    """
    loss_keys, n = prob["loss_keys"], prob["num_sites"]

    def site_keys(key):
        if keys == "plain":
            return jax.random.split(key, n)
        kg = jax.random.split(key)[0] if keys.startswith("vigrad") else key
        out = []
        for _ in range(n):
            kg, sub = jax.random.split(kg)
            out.append(sub)
        return out

    def loss(p, key, *data):
        ks = jax.random.split(key, 1) if keys.startswith("vigrad") else key[None]
        return loss_keys(p, site_keys(ks[0]), *data)

    @jax.jit
    def train(params, key, *data):
        def step(carry, t):
            params, opt_state, bad = carry
            base = unrolled_key_derivation(key) if keys == "vigrad-unrolled" else key
            value, grads = jax.value_and_grad(loss)(params, jax.random.fold_in(base, t), *data)
            updates, new_opt = OPTIMIZER.update(grads, opt_state, params)
            new_params = optax.apply_updates(params, updates)
            if guard == "none":
                return (new_params, new_opt, bad), value
            finite = jnp.isfinite(value) & jnp.all(
                jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)])
            )
            new_bad = jnp.where(~finite & (bad < 0), t, bad)
            if guard == "detect":
                return (new_params, new_opt, new_bad), value
            if guard == "detect+store":
                return (new_params, new_opt, new_bad), (value, finite)
            ok = finite & (bad < 0)
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
            return (keep(new_params, params), keep(new_opt, opt_state), new_bad), value

        carry = (params, OPTIMIZER.init(params), jnp.array(-1, jnp.int32))
        return jax.lax.scan(step, carry, jnp.arange(steps, dtype=jnp.int32))

    args = (prob["init"](), jax.random.key(SEED), *data)
    return (lambda: jax.block_until_ready(train(*args))[1]), train.lower(*args)


VARIANTS = {
    "hand-written JAX": ("plain", "none"),
    "+ vigrad's PRNG calls (JAX's rolled Threefry)": ("vigrad", "none"),
    "+ vigrad's PRNG calls, key derivations unrolled": ("vigrad-unrolled", "none"),
    "+ NaN guard (check + where on the carry)": ("plain", "where"),
    "+ NaN guard, detect only (no where)": ("plain", "detect"),
    "+ NaN guard, detect only, check also stored per step": ("plain", "detect+store"),
    "+ unrolled derivations + detect-only guard (= vigrad's step)": ("vigrad-unrolled", "detect"),
    "+ rolled PRNG + detect-only guard": ("vigrad", "detect"),
    "seed-only PRNG (no vigrad derivations) + detect-only guard": ("seed", "detect"),
}


def variant_ladder(names: list[str], steps: int, reps: int) -> list[str]:
    lines = [
        f"### What vigrad's compiled step adds to the hand-written loop ({steps} steps, median "
        f"of {reps}, interleaved)",
        "",
        "'ops/step' counts the top-level operations of the compiled scan body (each one a separate "
        "kernel launch on XLA:CPU); 'PRNG loops' the rolled threefry while loops among them.",
        "",
    ]
    for name in names:
        prob = PROBLEMS[name]
        data = prob["data"]()
        runs, stats, times = {}, {}, {}

        def compile_stats(lowered) -> tuple[int, int, float]:
            t0 = time.perf_counter()
            text = lowered.compile().as_text()
            return (*_hlo_body_stats(text), time.perf_counter() - t0)

        for label, spec in VARIANTS.items():
            runs[label], lowered = build_variant(prob, data, steps, *spec)
            stats[label] = compile_stats(lowered)
        chunk, inputs = vigrad_chunk_inputs(prob, data, steps)
        runs["vigrad.fit's compiled chunk"] = lambda c=chunk, i=inputs: jax.block_until_ready(
            c(*i)
        )[1]
        ops, loops, _ = compile_stats(chunk.lower(*inputs))
        stats["vigrad.fit's compiled chunk"] = (ops, loops, float("nan"))  # compiled earlier
        for label, run in runs.items():
            run()
            times[label] = []
        for _ in range(reps):
            for label, run in runs.items():
                times[label].append(_timed(run)[0])
        base = statistics.median(times["hand-written JAX"])
        lines += [
            f"#### {prob['title']}",
            "",
            "| variant | median per step (us) | ratio | min per step (us) | ratio of mins "
            "| ops/step | PRNG loops/step | XLA compile (s) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        base_min = min(times["hand-written JAX"])
        for label in runs:
            med, lo = statistics.median(times[label]), min(times[label])
            ops, loops, comp = stats[label]
            lines.append(
                f"| {label} | {1e6 * med / steps:.2f} | {med / base:.3f} | {1e6 * lo / steps:.2f} "
                f"| {lo / base_min:.3f} | {ops} | {loops} | "
                + ("(compiled earlier)" if comp != comp else f"{comp:.2f}")
                + " |"
            )
        lines.append("")
        print("\n".join(lines[-len(runs) - 5 :]), flush=True)
    return lines


# --------------------------------------------------------------------------------------------------
# End to end: one fresh process per measurement.
# --------------------------------------------------------------------------------------------------

E2E = {
    "jax": "hand-written JAX (jit + lax.scan)",
    "numpyro": "NumPyro SVI.run(progress_bar=False)",
    "vigrad": "vigrad.fit(progress_bar=False), default chunks (20)",
    "vigrad-1chunk": "vigrad.fit(progress_bar=False, chunk_size=steps)",
}


def _stages(jitted, args: tuple, times: dict) -> np.ndarray:
    """Trace, lower, compile and run ``jitted`` on ``args``, timing each stage into ``times``."""
    t = time.perf_counter()
    traced = jitted.trace(*args)
    times["trace (Python)"], t = time.perf_counter() - t, time.perf_counter()
    lowered = traced.lower()
    times["lower to HLO"], t = time.perf_counter() - t, time.perf_counter()
    compiled = lowered.compile()
    times["XLA compile"], t = time.perf_counter() - t, time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    times["run all steps"] = time.perf_counter() - t
    return out


def stages_worker(contender: str, name: str, steps: int) -> None:
    """One fresh process: the stages of a first fit, timed one by one (no compile cache)."""
    prob = PROBLEMS[name]
    data = prob["data"]()
    jax.block_until_ready(data)
    times = {}
    t0 = time.perf_counter()
    if contender == "numpyro":
        svi = SVI(prob["model"], prob["guide"], OPTIMIZER, Trace_ELBO())
        state = svi.init(jax.random.key(SEED), *data)
        jax.block_until_ready(state)
        times["setup (svi.init)"] = time.perf_counter() - t0
        train = jax.jit(
            lambda s, *d: jax.lax.scan(lambda c, _: svi.update(c, *d), s, None, length=steps)
        )
        _stages(train, (state, *data), times)
    elif contender == "vigrad":
        from vigrad.infer import fit as fit_mod
        from vigrad.infer.static import split_static

        t = time.perf_counter()
        dynamic, static_key = split_static(data, {})
        init_key, base_key = jax.random.split(jax.random.key(SEED))
        params_u, cons = fit_mod.init_params(init_key, prob["model"], prob["guide"], data, {})
        jax.block_until_ready(params_u)
        times["setup: init_params"], t = time.perf_counter() - t, time.perf_counter()
        cons_key = tuple((n, fit_mod._Same(cons[n])) for n in sorted(cons))
        obj_state = OBJECTIVE.init_state(
            init_key, fit_mod._constrain(params_u, cons_key), prob["model"], prob["guide"], *data
        )
        times["setup: objective.init_state (trace)"] = time.perf_counter() - t
        carry = (params_u, OPTIMIZER.init(params_u), obj_state)
        chunk = _fit_chunk(prob, static_key, cons_key, steps)
        _stages(chunk, _chunk_args(carry, base_key, dynamic, steps), times)
    else:
        loss = prob["loss"]

        def train(params, key, *data):
            opt_state = OPTIMIZER.init(params)

            def step(carry, t):
                params, opt_state = carry
                value, grads = jax.value_and_grad(loss)(params, jax.random.fold_in(key, t), *data)
                updates, opt_state = OPTIMIZER.update(grads, opt_state, params)
                return (optax.apply_updates(params, updates), opt_state), value

            return jax.lax.scan(step, (params, opt_state), jnp.arange(steps))

        params = prob["init"]()
        times["setup"] = time.perf_counter() - t0
        _stages(jax.jit(train), (params, jax.random.key(SEED), *data), times)
    times["total"] = time.perf_counter() - t0
    print(json.dumps({"stages": times}))


def e2e_breakdown(names: list[str], steps: int, threads: int) -> list[str]:
    env = _xla_env(threads)
    lines = [
        f"### Stages of a first fit, one fresh process each ({steps} steps, seconds)",
        "",
    ]
    print("\n".join(lines), flush=True)
    for name in names:
        recs = {}
        for c in ("jax", "numpyro", "vigrad"):
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", c + "-stages", name]
            cmd += ["--steps", str(steps), "--threads", str(threads)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            recs[c] = json.loads(out.stdout.strip().splitlines()[-1])["stages"]
        first = len(lines)
        lines += [f"#### {PROBLEMS[name]['title']}", "", "| stage | JAX | NumPyro | vigrad |"]
        lines.append("|---|---:|---:|---:|")
        setup = lambda r: sum(v for k, v in r.items() if k.startswith("setup"))
        for k in ("trace (Python)", "lower to HLO", "XLA compile", "run all steps", "total"):
            lines.append(f"| {k} | " + " | ".join(f"{recs[c][k]:.3f}" for c in recs) + " |")
        lines.insert(
            len(lines) - 5,
            "| setup (params, optimiser state; vigrad: init_params + init_state) | "
            + " | ".join(f"{setup(recs[c]):.3f}" for c in recs)
            + " |",
        )
        extra = {k: v for k, v in recs["vigrad"].items() if k.startswith("setup:")}
        lines += ["", "vigrad setup: " + ", ".join(f"{k[7:]} {v:.3f}" for k, v in extra.items())]
        lines.append("")
        print("\n".join(lines[first:]), flush=True)
    return lines


def worker(contender: str, name: str, steps: int) -> None:
    if contender.endswith("-stages"):
        stages_worker(contender[: -len("-stages")], name, steps)
        return
    prob = PROBLEMS[name]
    data = prob["data"]()
    jax.block_until_ready(data)
    t0 = time.perf_counter()
    if contender == "jax":
        losses = build_jax(prob, data, steps)()
    elif contender == "numpyro":
        svi = SVI(prob["model"], prob["guide"], OPTIMIZER, Trace_ELBO())
        result = svi.run(jax.random.key(SEED), steps, *data, progress_bar=False)
        jax.block_until_ready(result.params)
        losses = result.losses
    else:
        result = vigrad.fit(
            prob["model"],
            prob["guide"],
            OBJECTIVE,
            OPTIMIZER,
            steps,
            jax.random.key(SEED),
            *data,
            chunk_size=steps if contender == "vigrad-1chunk" else None,
            progress_bar=False,
        )
        jax.block_until_ready(result.params)
        losses = result.losses
    seconds = time.perf_counter() - t0
    losses = np.asarray(losses)
    tail = float(np.mean(losses[-max(1, steps // 10) :]))
    print(json.dumps({"seconds": seconds, "tail_loss": tail}))


def e2e_table(names: list[str], steps: int, reps: int, threads: int) -> list[str]:
    env = _xla_env(threads)
    lines = [
        f"steps = {steps}; {reps} fresh process(es) per cell, median. 'fit' = from the call to the "
        "returned result (tracing, compilation and all steps); 'process' = the whole process "
        "(interpreter start, imports, data, fit).",
        "",
    ]
    for name in names:
        fit_s = {c: [] for c in E2E}
        proc_s = {c: [] for c in E2E}
        tail = {}
        for _ in range(reps):
            for c in E2E:
                cmd = [sys.executable, os.path.abspath(__file__), "--worker", c, name]
                cmd += ["--steps", str(steps), "--threads", str(threads)]
                t0 = time.perf_counter()
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                proc_s[c].append(time.perf_counter() - t0)
                rec = json.loads(out.stdout.strip().splitlines()[-1])
                fit_s[c].append(rec["seconds"])
                tail[c] = rec["tail_loss"]
        base = statistics.median(fit_s["numpyro"])
        lines += [
            f"### {PROBLEMS[name]['title']}",
            "",
            "| contender | fit (s) | ratio to NumPyro SVI.run | process (s) "
            "| mean loss, last 10% of steps |",
            "|---|---:|---:|---:|---:|",
        ]
        for c, label in E2E.items():
            med = statistics.median(fit_s[c])
            lines.append(
                f"| {label} | {med:.2f} | {med / base:.2f} | "
                f"{statistics.median(proc_s[c]):.2f} | {tail[c]:.2f} |"
            )
        lines.append("")
        print("\n".join(lines[-len(E2E) - 5 :]), flush=True)
    return lines


def main() -> None:
    if ARGS.worker:
        worker(*ARGS.worker, ARGS.steps)
        return
    names = ARGS.models.split(",")
    print(
        f"jax {jax.__version__}, numpyro {numpyro.__version__}, optax {optax.__version__}; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; cpu count {os.cpu_count()}",
        flush=True,
    )
    if ARGS.table in ("all", "steady"):
        print("\n## Steady state per step\n", flush=True)
        steady_table(names, ARGS.steps, ARGS.reps)
        if ARGS.profile:
            print("\n## Where vigrad's time goes\n", flush=True)
            call_breakdown(names, ARGS.steps, ARGS.reps)
            variant_ladder(names, ARGS.steps, ARGS.reps)
    if ARGS.table in ("all", "e2e"):
        print("\n## End to end (fresh process each)\n", flush=True)
        e2e_table(names, ARGS.steps, ARGS.e2e_reps, ARGS.threads)
        if ARGS.profile:
            e2e_breakdown(names, ARGS.steps, ARGS.threads)


if __name__ == "__main__":
    main()
