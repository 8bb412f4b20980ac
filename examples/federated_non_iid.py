"""DSGLD drifts on non-IID shards as local steps grow; FSGLD does not.

Five clients each hold 100 points of 1-D Gaussian data around a different centre (-4 .. 4), with
a Gaussian prior on the common mean, so the posterior is Gaussian in closed form. Both samplers
run rounds of T local SGLD steps on one client's data (T = 1, 20, 200). DSGLD spends each round
following one client's posterior, so it drifts and over-disperses as T grows; FSGLD adds the
conducive gradient of Laplace approximations of every client's likelihood and stays on the exact
posterior for every T.

    .venv/bin/python examples/federated_non_iid.py [results/federated_non_iid.png] [--steps 60000]
        [--local-steps 1,20,200]
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402

import vigrad.sgmcmc as sg  # noqa: E402

PRIOR_SD, SIGMA = 10.0, 1.0
CENTRES = jnp.array([-4.0, -2.0, 0.0, 2.0, 4.0])
PER_CLIENT = 100


def model(x):
    mu = numpyro.sample("mu", dist.Normal(0.0, PRIOR_SD))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("obs", dist.Normal(mu, SIGMA), obs=numpyro.subsample(x, event_dim=0))


def main(
    path: str, steps: int = 60_000, warmup: int = 5_000, local_steps: tuple = (1, 20, 200)
) -> None:
    jax.config.update("jax_enable_x64", True)
    noise = jax.random.normal(jax.random.PRNGKey(0), (len(CENTRES), PER_CLIENT))
    x = (CENTRES[:, None] + SIGMA * noise).reshape(-1)
    labels = jnp.repeat(jnp.arange(len(CENTRES)), PER_CLIENT)
    precision = 1 / PRIOR_SD**2 + x.shape[0] / SIGMA**2
    mean, sd = float(x.sum() / SIGMA**2 / precision), precision**-0.5

    fig, axes = plt.subplots(
        1, len(local_steps), figsize=(4 * len(local_steps), 3.6), sharey=True, squeeze=False
    )
    axes = axes[0]
    print(f"exact posterior: mean {mean:.4f}, sd {sd:.4f}")
    print("| T | sampler | mean error / sd | sd ratio |")
    print("|---|---|---|---|")
    for ax, t in zip(axes, local_steps, strict=True):
        runs = {}
        for name, cls in [("DSGLD", sg.DSGLD), ("FSGLD", sg.FSGLD)]:
            kernel = cls(2e-5, shards=labels, local_steps=t)
            result = sg.sample(
                model,
                kernel,
                steps,
                50,
                4,
                jax.random.PRNGKey(1),
                x,
                num_warmup=warmup,
                thinning=10,
                progress_bar=False,
            )
            runs[name] = draws = np.asarray(result.samples["mu"]).reshape(-1)
            err, ratio = (draws.mean() - mean) / sd, draws.std() / sd
            print(f"| {t} | {name} | {err:+.2f} | {ratio:.2f} |")
        lo = min(mean - 5 * sd, np.quantile(runs["DSGLD"], 0.005))
        hi = max(mean + 5 * sd, np.quantile(runs["DSGLD"], 0.995))
        grid = np.linspace(lo, hi, 600)
        exact = np.exp(-0.5 * ((grid - mean) / sd) ** 2) / (sd * np.sqrt(2 * np.pi))
        ax.plot(grid, exact, "k-", lw=2, label="exact")
        for (name, draws), colour in zip(runs.items(), ("C3", "C0"), strict=True):
            # Weights normalise over all draws, so mass outside the panel is not redistributed.
            width = (hi - lo) / 120
            weights = np.full(draws.shape, 1 / (draws.size * width))
            ax.hist(
                draws,
                bins=120,
                range=(lo, hi),
                weights=weights,
                histtype="step",
                color=colour,
                lw=1.5,
                label=name,
            )
        ax.set_yscale("log")
        ax.set_ylim(1e-2, 2 * exact.max())
        ax.set_title(f"T = {t} local steps")
        ax.set_xlabel("mu")
    axes[0].set_ylabel("density (log scale)")
    axes[0].legend()
    fig.suptitle("Non-IID clients: DSGLD drifts as T grows, FSGLD stays on the posterior")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default="results/federated_non_iid.png")
    parser.add_argument("--steps", type=int, default=60_000, help="steps per chain after warm-up")
    parser.add_argument("--warmup", type=int, default=5_000)
    parser.add_argument(
        "--local-steps", default="1,20,200", help="comma-separated local steps per round T"
    )
    args = parser.parse_args()
    local_steps = tuple(int(t) for t in args.local_steps.split(","))
    main(args.path, args.steps, args.warmup, local_steps)
