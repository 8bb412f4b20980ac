"""Gradient variance of Score, Reparam and PathGradient on the conjugate Gaussian model.

Model ``mu ~ N(0, 1)``, ``x_i ~ N(mu, 1)`` (i = 1..n, generated data), guide ``mu ~ N(m, s)``. The
gradient is taken with respect to the unconstrained parameters the optimiser sees, ``(m, log s)``,
of ``vigrad.ELBO(estimators={"mu": estimator}).loss`` (one particle). At fixed parameters, M
independent estimates are drawn with ``jax.vmap`` over keys; the table reports the variance of each
coordinate, the trace of the covariance (their sum) and its ratio to Reparam's, at (a) the guide's
initial parameters and (b) the exact posterior (where the exact gradient is zero). Each row also
checks the mean against the closed-form gradient (max |z| over the two coordinates).

Usage::

    .venv/bin/python benchmarks/core/bench_variance.py [--num-estimates 10000]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402

import vigrad  # noqa: E402

jax.config.update("jax_enable_x64", True)

NUM_DATA = 20
DATA = jnp.asarray(np.random.default_rng(0).normal(1.5, 1.0, size=NUM_DATA))
POST_MEAN = float(jnp.sum(DATA) / (NUM_DATA + 1))
POST_SD = float(1.0 / np.sqrt(NUM_DATA + 1.0))


def model(x):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("x", dist.Normal(mu, 1.0), obs=x)


def guide(x):
    m = numpyro.param("m", 0.0)
    s = numpyro.param("s", 1.0, constraint=dist.constraints.positive)
    numpyro.sample("mu", dist.Normal(m, s))


def exact_grad(m: float, log_s: float) -> np.ndarray:
    """Gradient of the negative ELBO in (m, log s), in closed form.

    ELBO(m, s) = -(n + 1)/2 log(2 pi) - (m^2 + s^2)/2 - sum_i ((x_i - m)^2 + s^2)/2
                 + log s + 1/2 log(2 pi e).
    """
    s2 = np.exp(2 * log_s)
    d_m = -m + float(jnp.sum(DATA - m))
    d_log_s = 1.0 - (NUM_DATA + 1) * s2
    return -np.array([d_m, d_log_s])


ESTIMATORS = {
    "Score": vigrad.Score(),
    "Reparam": vigrad.Reparam(),
    "PathGradient": vigrad.PathGradient(),
}


def estimates(estimator, theta: jax.Array, keys: jax.Array) -> np.ndarray:
    objective = vigrad.ELBO(estimators={"mu": estimator})

    def loss(theta, key):
        params = {"m": theta[0], "s": jnp.exp(theta[1])}
        return objective.loss(key, params, model, guide, DATA)

    grads = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(theta, keys)
    return np.asarray(grads)


def table(num_estimates: int, seed: int) -> list[str]:
    points = {
        "(a) initial parameters m = 0, s = 1": (0.0, 0.0),
        f"(b) exact posterior m = {POST_MEAN:.4f}, s = {POST_SD:.4f}": (POST_MEAN, np.log(POST_SD)),
    }
    keys = jax.random.split(jax.random.key(seed), num_estimates)
    lines = []
    for title, (m, log_s) in points.items():
        exact = exact_grad(m, log_s) + 0.0  # no negative zeros in the table
        theta = jnp.array([m, log_s])
        rows = {}
        for name, est in ESTIMATORS.items():
            g = estimates(est, theta, keys)
            var = g.var(axis=0, ddof=1)
            err = np.abs(g.mean(axis=0) - exact)
            if np.all(var < 1e-20):  # zero up to float64 rounding: a z-score is meaningless
                check = f"zero variance; max abs error {np.max(err):.1e}"
            else:
                check = f"{np.max(err / np.sqrt(var / num_estimates)):.2f}"
            rows[name] = (var, float(var.sum()), check, g.mean(axis=0))
        ref = rows["Reparam"][1]
        lines += [
            f"### {title}",
            "",
            f"Exact gradient of the loss in (m, log s): ({exact[0]:.4g}, {exact[1]:.4g}).",
            "",
            "| estimator | mean gradient (m, log s) | var d/dm | var d/dlog s | trace of covariance "
            "| ratio to Reparam | max abs z vs exact |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for name, (var, tr, check, mean) in rows.items():
            lines.append(
                f"| {name} | ({mean[0]:.4g}, {mean[1]:.4g}) | {var[0]:.4g} | {var[1]:.4g} | "
                f"{tr:.4g} | {tr / ref:.3g} | {check} |"
            )
        lines.append("")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-estimates", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print(
        f"n = {NUM_DATA} data points, M = {args.num_estimates} estimates per row, one particle "
        f"each, float64, key seed {args.seed}.\n"
    )
    print("\n".join(table(args.num_estimates, args.seed)))


if __name__ == "__main__":
    main()
