"""Scaling benchmark: a fit's step time and throughput against the device count.

The devices are CPU devices simulated by XLA (``--xla_force_host_platform_device_count``) that share
this machine's cores, so the table measures what splitting a step over devices *costs* (the
partitioned program, the collectives, the dispatch), not a speed-up: on 2 cores, 4 simulated
devices cannot compute faster than 1.

Problems (from the model zoo, digits truncated to 1792 images so that 1, 2 and 4 devices split
them evenly):

- ``bayesian_mlp``: in-memory data split over ``data``, the plate subsamples 256 images a step;
- ``bayesian_mlp-stream``: the same model fed by :class:`vigrad.Minibatches` (256 images a step,
  streamed a chunk at a time), the minibatch split over ``data``;
- ``vae``: in-memory data split over ``data``, 256 images a step.

For each problem and device count: one warm-up fit (compiles), then one fit of ``--chunks``
chunks of ``--steps`` steps. Each compiled chunk is timed on its own (from its call until its
outputs are ready), so the fixed cost of a fit call (initialisation, tracing the objective's
state, transfers) is left out. Under a shared machine's load the fastest chunk is the steadiest
estimate of a step's cost; the median is given too, with the process CPU time of the chunks.

    .venv/bin/python benchmarks/scaling/bench_scaling.py [--steps 200] [--chunks 5]
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import optax  # noqa: E402
from numpyro.infer.autoguide import AutoNormal  # noqa: E402

import vigrad  # noqa: E402
from vigrad.infer import driver  # noqa: E402
from vigrad.zoo import load_model  # noqa: E402

N, BATCH, HIDDEN = 1792, 256, 32
# One objective and optimiser for every fit: a fit's compilation is cached on these objects.
OBJECTIVE, OPTIMIZER = vigrad.ELBO(), optax.adam(1e-3)


def streamed_mlp(x, y, num_data):
    """The zoo's Bayesian MLP on a minibatch given as the arguments (plate scaling N / B)."""
    d = x.shape[1]
    w1 = numpyro.sample("w1", dist.Normal(0.0, 1.0).expand([d, HIDDEN]).to_event(2))
    b1 = numpyro.sample("b1", dist.Normal(0.0, 1.0).expand([HIDDEN]).to_event(1))
    w2 = numpyro.sample("w2", dist.Normal(0.0, HIDDEN**-0.5).expand([HIDDEN, 10]).to_event(2))
    b2 = numpyro.sample("b2", dist.Normal(0.0, 1.0).expand([10]).to_event(1))
    with numpyro.plate("data", num_data, subsample_size=x.shape[0]):
        logits = jnp.tanh(x @ w1 + b1) @ w2 + b2
        numpyro.sample("y", dist.Categorical(logits=logits), obs=y)


def problems():
    out = {}
    for name in ("bayesian_mlp", "vae"):
        zoo = load_model(name)
        data = {k: jnp.asarray(v)[:N] for k, v in zoo.load_data().items()}
        out[name] = dict(model=zoo.model, guide=zoo.guide, kwargs=data, stream=None)
    mlp = out["bayesian_mlp"]["kwargs"]
    out["bayesian_mlp-stream"] = dict(
        model=streamed_mlp,
        guide=AutoNormal(streamed_mlp, init_scale=0.05),
        kwargs={"num_data": N},
        stream=lambda: vigrad.Minibatches(BATCH, x=np.asarray(mlp["x"]), y=np.asarray(mlp["y"])),
    )
    return out


class ChunkTimer:
    """Wraps the driver's compiled chunks to record each call's wall and process CPU time."""

    def __init__(self):
        self.times: list[tuple[float, float]] = []
        self._original = driver.compiled_chunk

    def __enter__(self):
        def timed(config, build):
            chunk = self._original(config, build)

            def run(*args):
                wall, cpu = time.perf_counter(), time.process_time()
                out = jax.block_until_ready(chunk(*args))
                self.times.append((time.perf_counter() - wall, time.process_time() - cpu))
                return out

            return run

        driver.compiled_chunk = timed
        return self

    def __exit__(self, *exc):
        driver.compiled_chunk = self._original


def fit(problem: dict, devices: int, steps: int, chunks: int) -> None:
    stream = problem["stream"]() if problem["stream"] else None
    result = vigrad.fit(
        problem["model"],
        problem["guide"],
        OBJECTIVE,
        OPTIMIZER,
        steps * chunks,
        jax.random.key(0),
        chunk_size=steps,
        progress_bar=False,
        devices=devices,
        stream=stream,
        **problem["kwargs"],
    )
    jax.block_until_ready(result.params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--chunks", type=int, default=5)
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    print(f"jax {jax.__version__}, {jax.device_count()} CPU devices, {os.cpu_count()} cores")
    print(f"load average at start: {os.getloadavg()}")
    print()
    print(
        "| problem | devices | first fit (s, compile + run) | ms/step, fastest chunk "
        "| ms/step, median chunk | CPU ms/step, median chunk | images/s, fastest chunk |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    steps = args.steps
    for name, problem in problems().items():
        for k in args.devices:
            start = time.perf_counter()
            fit(problem, k, steps, 1)
            first = time.perf_counter() - start
            with ChunkTimer() as timer:
                fit(problem, k, steps, args.chunks)
            wall = sorted(t[0] / steps for t in timer.times)
            cpu = statistics.median(t[1] / steps for t in timer.times)
            print(
                f"| {name} | {k} | {first:.1f} | {1e3 * wall[0]:.2f} "
                f"| {1e3 * statistics.median(wall):.2f} | {1e3 * cpu:.2f} "
                f"| {BATCH / wall[0]:,.0f} |",
                flush=True,
            )
    print()
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
