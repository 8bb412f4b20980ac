"""The noisy cone: ELBO and IWELBO with a mean-field guide against hierarchical guides (HVI, IWHVI,
DIWHVI) whose auxiliary angle is marginalised approximately.

Model: ``x, y ~ N(0, 10)``, ``z ~ N(x^2 + y^2, 0.1 + (x^2 + y^2) / 100)``, ``z = 5`` observed. The
posterior is a thin ring of radius about ``sqrt(5)``, which a Gaussian guide cannot follow. The
hierarchical guide draws an auxiliary ``u ~ N(0, 1)``, sets the angle ``2 pi u`` and puts a Gaussian
at that point of a learned circle; its marginal over ``(x, y)`` is a ring, but its density needs
the integral over ``u``, which the reverse model ``r(u | x, y)`` (a Gaussian around the observed
angle, with learned offset and width) estimates.

Run::

    python examples/noisy_cone.py                    # 3000 steps per objective
    python examples/noisy_cone.py --steps 200 --plot cone.png

Each objective is trained with ``vigrad.fit`` and its final value is estimated with fresh draws
(mean of ``--eval`` independent estimates, with its standard error). The bounds are of
``log p(z = 5)``: a larger value is a tighter bound.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from numpyro.handlers import seed, substitute, trace

import vigrad
from vigrad.objectives.hvi import DIWHVI, HVI, IWHVI, with_reverse

Z_OBS = 5.0


def model(z_obs):
    x = numpyro.sample("x", dist.Normal(0.0, 10.0))
    y = numpyro.sample("y", dist.Normal(0.0, 10.0))
    rs = x**2 + y**2
    numpyro.sample("z", dist.Normal(rs, 0.1 + rs / 100.0), obs=z_obs)


def mean_field(z_obs):
    loc = numpyro.param("loc", jnp.array([1.0, 1.0]))
    log_scale = numpyro.param("log_scale", jnp.zeros(2))
    numpyro.sample("x", dist.Normal(loc[0], jnp.exp(log_scale[0])))
    numpyro.sample("y", dist.Normal(loc[1], jnp.exp(log_scale[1])))


def ring(z_obs):
    radius = jnp.exp(numpyro.param("log_radius", jnp.log(2.0)))
    log_scale = numpyro.param("log_scale", jnp.full(2, -1.0))
    u = numpyro.sample("u", dist.Normal(0.0, 1.0))
    angle = 2 * jnp.pi * u
    numpyro.sample("x", dist.Normal(radius * jnp.cos(angle), jnp.exp(log_scale[0])))
    numpyro.sample("y", dist.Normal(radius * jnp.sin(angle), jnp.exp(log_scale[1])))


def reverse(latents, z_obs):
    offset = numpyro.param("offset", 0.0)
    log_width = numpyro.param("log_width", jnp.log(0.1))
    angle = jnp.arctan2(latents["y"], latents["x"]) / (2 * jnp.pi)
    numpyro.sample("u", dist.Normal(angle + offset, jnp.exp(log_width)))


RING_MODEL = with_reverse(model, reverse)

# name -> (model, guide, objective)
RUNS = {
    "ELBO": (model, mean_field, vigrad.ELBO(num_particles=1)),
    "IWELBO(K=5)": (model, mean_field, vigrad.IWELBO(num_particles=5)),
    "HVI": (RING_MODEL, ring, HVI(num_particles=1)),
    "IWHVI(M=5)": (RING_MODEL, ring, IWHVI(num_inner=5, num_particles=1)),
    "DIWHVI(M=5, K=5)": (RING_MODEL, ring, DIWHVI(num_inner=5, num_particles=5)),
}


def final_value(objective, model_fn, guide, params, key, num_estimates):
    """Mean and standard error of ``num_estimates`` independent estimates of the objective."""
    keys = jax.random.split(key, num_estimates)
    values = -jax.jit(jax.vmap(lambda k: objective.loss(k, params, model_fn, guide, Z_OBS)))(keys)
    values = np.asarray(values)
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(num_estimates))


def guide_samples(guide, params, key, n):
    def one(k):
        tr = trace(seed(substitute(guide, data=params), k)).get_trace(Z_OBS)
        return jnp.stack([tr["x"]["value"], tr["y"]["value"]])

    return np.asarray(jax.vmap(one)(jax.random.split(key, n)))


def run(steps: int, lr: float, num_eval: int, seed_: int, progress: bool):
    key = jax.random.key(seed_)
    results = {}
    for i, (name, (model_fn, guide, objective)) in enumerate(RUNS.items()):
        fit_key, eval_key = jax.random.split(jax.random.fold_in(key, i))
        result = vigrad.fit(
            model_fn, guide, objective, optax.adam(lr), steps, fit_key, Z_OBS,
            progress_bar=progress,
        )  # fmt: skip
        if num_eval > 0:
            mean, se = final_value(objective, model_fn, guide, result.params, eval_key, num_eval)
        else:
            # The estimates of the last tenth of training, without compiling an evaluation.
            tail = -np.asarray(result.losses[-max(1, steps // 10) :])
            mean, se = float(tail.mean()), float(tail.std() / np.sqrt(tail.size))
        results[name] = (mean, se, guide, result)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3000, help="optimisation steps per objective")
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate")
    parser.add_argument(
        "--eval",
        type=int,
        default=2000,
        help="estimates for the final value (0: the last tenth of the training estimates)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default=None, help="write guide samples to this image file")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    results = run(args.steps, args.lr, args.eval, args.seed, not args.no_progress)
    print(f"noisy cone, z = {Z_OBS}, {args.steps} steps, Adam({args.lr})")
    print(f"{'objective':<18} {'final value':>12} {'std. error':>11}")
    for name, (mean, se, _, _) in results.items():
        print(f"{name:<18} {mean:>12.4f} {se:>11.4f}")

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(results), figsize=(3 * len(results), 3), sharey=True)
        for ax, (name, (_, _, guide, result)) in zip(axes, results.items(), strict=True):
            xy = guide_samples(guide, result.params, jax.random.key(1), 2000)
            ax.scatter(xy[:, 0], xy[:, 1], s=1, alpha=0.4)
            ax.set_title(name, fontsize=9)
            ax.set_aspect("equal")
            ax.set_xlim(-4, 4)
            ax.set_ylim(-4, 4)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"guide samples written to {args.plot}")
    return results


if __name__ == "__main__":
    main()
