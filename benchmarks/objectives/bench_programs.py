"""Step time of the built-in objectives written as programs against the same objectives before
they were (git revision 8f27954), on the same small models.

Each implementation runs in its own worker process with ``PYTHONPATH`` pointing at its own tree (a
temporary ``git worktree`` of each revision, removed afterwards). Each worker builds every
objective and compiles ``jax.jit(jax.value_and_grad(loss))`` in the parameters; the parent then
asks the two workers in turn to time ``--calls`` calls of one objective, interleaving objectives
and alternating which implementation goes first, ``--repeats`` times. Reported per objective: the
fastest repeat of each implementation (load on a shared machine only ever adds time, so the
minimum is the least disturbed measurement, as ``timeit`` recommends), their ratio new / old, the
same ratio of the medians, the trace-and-compile time and the number of instructions in the
optimised XLA program (a load-independent measure of what a step computes).

Models (float32):

* ``gauss``: ``z_d ~ N(0, 1)``, ``x_d ~ N(z_d, 0.5)`` for ``d < --dim`` (a plate), mean-field Gaussian
  guide; ``Reparam`` sites by default, ``Score`` sites where the name says so.
* ``hier``: the same model with a hierarchical guide ``u_d ~ N(m_d, s_d)``, ``z_d ~ N(u_d, t_d)``
  and the reverse model ``r(u | z) = N(a z + b, c)``.

Run::

    python benchmarks/objectives/bench_programs.py              # as in RESULTS.md
    python benchmarks/objectives/bench_programs.py --dim 1024   # where compute outweighs dispatch
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def objectives(vigrad):
    """name -> (objective, model kind); the same calls in both revisions."""
    score = {"z": vigrad.Score()}
    return {
        "ELBO K=1 Reparam": (vigrad.ELBO(num_particles=1), "gauss"),
        "ELBO K=8 Reparam": (vigrad.ELBO(num_particles=8), "gauss"),
        "ELBO K=1 Score": (vigrad.ELBO(num_particles=1, estimators=score), "gauss"),
        "ELBO K=8 Score": (vigrad.ELBO(num_particles=8, estimators=score), "gauss"),
        "IWELBO K=8": (vigrad.IWELBO(num_particles=8), "gauss"),
        "VIMCO K=8 Score": (vigrad.VIMCO(num_particles=8, estimators=score), "gauss"),
        "DReG K=8": (vigrad.DReG(num_particles=8), "gauss"),
        "RWS K=8": (vigrad.RWS(num_particles=8), "gauss"),
        "HVI K=1": (vigrad.HVI(num_particles=1), "hier"),
        "IWHVI M=5 K=1": (vigrad.IWHVI(num_inner=5, num_particles=1), "hier"),
    }


def worker(expected_root: str, dim: int) -> None:
    """Compile every objective, then answer ``name calls`` lines with seconds per call."""
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.handlers import seed, trace

    import vigrad

    if not vigrad.__file__.startswith(expected_root):
        raise SystemExit(f"imported vigrad from {vigrad.__file__}, expected {expected_root}")

    def model(x):
        with numpyro.plate("d", dim):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0))
            numpyro.sample("x", dist.Normal(z, 0.5), obs=x)

    def gauss_guide(x):
        loc = numpyro.param("loc", jnp.zeros(dim))
        log_scale = numpyro.param("log_scale", jnp.full(dim, -0.5))
        with numpyro.plate("d", dim):
            numpyro.sample("z", dist.Normal(loc, jnp.exp(log_scale)))

    def hier_guide(x):
        m = numpyro.param("m", jnp.zeros(dim))
        log_s = numpyro.param("log_s", jnp.full(dim, -0.5))
        log_t = numpyro.param("log_t", jnp.full(dim, -1.0))
        with numpyro.plate("d", dim):
            u = numpyro.sample("u", dist.Normal(m, jnp.exp(log_s)))
            numpyro.sample("z", dist.Normal(u, jnp.exp(log_t)))

    def reverse(latents, x):
        a, b = numpyro.param("a", 0.5), numpyro.param("b", 0.0)
        log_c = numpyro.param("log_c", -0.5)
        with numpyro.plate("d", dim):
            numpyro.sample("u", dist.Normal(a * latents["z"] + b, jnp.exp(log_c)))

    x = jax.random.normal(jax.random.key(0), (dim,))
    pairs = {
        "gauss": (model, gauss_guide),
        "hier": (vigrad.with_reverse(model, reverse), hier_guide),
    }

    def initial_params(model_fn, guide):
        params = {}
        for fn in (guide, model_fn):
            tr = trace(seed(fn, jax.random.key(1))).get_trace(x)
            params.update({n: s["value"] for n, s in tr.items() if s["type"] == "param"})
        return params

    steps, compile_s, hlo_ops = {}, {}, {}
    key = jax.random.key(2)
    for name, (objective, kind) in objectives(vigrad).items():
        model_fn, guide = pairs[kind]
        params = initial_params(model_fn, guide)
        loss = lambda p, k, o=objective, m=model_fn, g=guide: o.loss(k, p, m, g, x)
        step = jax.jit(jax.value_and_grad(loss))
        start = time.perf_counter()
        compiled = step.lower(params, key).compile()
        compile_s[name] = time.perf_counter() - start
        # Instructions of the optimised XLA program: what a step computes, independent of load.
        hlo_ops[name] = sum(" = " in line for line in compiled.as_text().splitlines())
        for _ in range(10):
            jax.block_until_ready(compiled(params, key))
        steps[name] = (compiled, params)
    print(json.dumps({"ready": compile_s, "hlo_ops": hlo_ops}), flush=True)

    keys = jax.random.split(key, 64)
    for line in sys.stdin:
        name, calls = line.rsplit(" ", 1)
        step, params = steps[name]
        start = time.perf_counter()
        for i in range(int(calls)):
            out = step(params, keys[i % 64])
        jax.block_until_ready(out)
        print(json.dumps({"seconds": (time.perf_counter() - start) / int(calls)}), flush=True)


class Worker:
    def __init__(self, tree: Path, dim: int):
        env = {**os.environ, "PYTHONPATH": str(tree), "JAX_PLATFORMS": "cpu"}
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", str(tree), "--dim", str(dim)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tempfile.gettempdir(),
        )

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker exited with {self.proc.wait()}")
        return json.loads(line)

    def time(self, name: str, calls: int) -> float:
        self.proc.stdin.write(f"{name} {calls}\n")
        self.proc.stdin.flush()
        return self.read()["seconds"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def checkout(rev: str, where: Path) -> Path:
    if rev == ".":
        return ROOT
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(where), rev],
        check=True,
        capture_output=True,
    )
    return where


def remove(tree: Path) -> None:
    if tree != ROOT:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)])


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", default="8f27954", help="revision before objective programs")
    parser.add_argument("--new", default="HEAD", help="revision to compare ('.': working tree)")
    parser.add_argument("--dim", type=int, default=16, help="latent dimension of the models")
    parser.add_argument("--repeats", type=int, default=11, help="interleaved timing repeats")
    parser.add_argument("--calls", type=int, default=200, help="calls per timing")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.dim)
        return

    revs = {"old": args.old, "new": args.new}
    described = {
        side: subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", rev if rev != "." else "HEAD"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        + (" + working tree" if rev == "." else "")
        for side, rev in revs.items()
    }
    tmp = Path(tempfile.mkdtemp(prefix="vigrad-bench-"))
    trees = {side: checkout(rev, tmp / side) for side, rev in revs.items()}
    workers = {}
    try:
        workers = {side: Worker(tree, args.dim) for side, tree in trees.items()}
        ready = {side: w.read() for side, w in workers.items()}
        names = list(ready["old"]["ready"])
        times = {side: {n: [] for n in names} for side in workers}
        for r in range(args.repeats):
            order = ("old", "new") if r % 2 == 0 else ("new", "old")
            for name in names:
                for side in order:
                    times[side][name].append(workers[side].time(name, args.calls))
    finally:
        for w in workers.values():
            w.close()
        for tree in trees.values():
            remove(tree)
        tmp.rmdir()

    print(
        f"old {described['old']}, new {described['new']}; dim {args.dim}; {args.repeats} "
        f"interleaved repeats of {args.calls} calls; ms per jitted value_and_grad call"
    )
    print(
        "| objective | old ms (min) | new ms (min) | new / old (min) | new / old (median) "
        "| trace+compile s old / new | XLA ops old / new |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in names:
        old, new = times["old"][name], times["new"][name]
        print(
            f"| {name} | {1e3 * min(old):.3f} | {1e3 * min(new):.3f} | {min(new) / min(old):.3f} "
            f"| {median(new) / median(old):.3f} | "
            f"{ready['old']['ready'][name]:.1f} / {ready['new']['ready'][name]:.1f} | "
            f"{ready['old']['hlo_ops'][name]} / {ready['new']['hlo_ops'][name]} |"
        )


if __name__ == "__main__":
    main()
