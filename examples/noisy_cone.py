"""The noisy cone of Becker, Lew et al. (PLDI 2024, Table 4), with every objective written as a
vigrad program: ELBO and IWELBO with a mean-field guide, HVI, IWHVI and DIWHVI with a hierarchical
guide whose auxiliary angle is marginalised by importance sampling.

Model: ``x, y ~ N(0, 10)``, ``z ~ N(x^2 + y^2, 0.1 + (x^2 + y^2) / 100)``, ``z = 5`` observed. The
posterior is a thin ring of radius about ``sqrt(5)``, which a Gaussian guide cannot follow. The
hierarchical guide draws an angle ``2 pi u`` with ``u ~ Uniform(0, 1)`` and puts a Gaussian (learned
widths) at that point of the circle of radius ``sqrt(z)``; its marginal over ``(x, y)`` is a ring,
and its density ``q(x, y) = E_u[q(x, y | u)]`` is estimated from the guide's own angle and
``N - 1`` fresh angles from the prior (genjax.vi's ``marginal(..., sir(N))``):

    log q^_N(x, y) = log (1/N) sum_{n=1}^{N} q(x, y | u_n)

Set-up as in the paper's artifact: plain SGD (learning rate 1e-3) ascending the average of 64
independent estimates per step (one for the IWELBO), 20 000 steps for the mean-field guide
(initial means (0, 0) for the ELBO, (3, 0) for the IWELBO, log widths 1) and 5 000 for the
hierarchical one (log widths 0); the final value is the mean of 5 000 fresh single estimates.
The bounds are of ``log p(z = 5)``: a larger value is a tighter bound.

Run::

    python examples/noisy_cone.py                    # the paper's schedule (a few minutes)
    python examples/noisy_cone.py --steps 500 --plot cone.png
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

Z_OBS = 5.0


def model(z_obs):
    x = numpyro.sample("x", dist.Normal(0.0, 10.0))
    y = numpyro.sample("y", dist.Normal(0.0, 10.0))
    rs = x**2 + y**2
    numpyro.sample("z", dist.Normal(rs, 0.1 + rs / 100.0), obs=z_obs)


def mean_field(z_obs):
    loc = numpyro.param("loc", jnp.zeros(2))
    log_scale = numpyro.param("log_scale", jnp.ones(2))
    numpyro.sample("x", dist.Normal(loc[0], jnp.exp(log_scale[0])))
    numpyro.sample("y", dist.Normal(loc[1], jnp.exp(log_scale[1])))


def angle_prior():
    numpyro.sample("u", dist.Uniform(0.0, 1.0))


def ring(z_obs):
    log_scale = numpyro.param("log_scale", jnp.zeros(2))
    angle = 2 * jnp.pi * numpyro.sample("u", dist.Uniform(0.0, 1.0))
    radius = jnp.sqrt(z_obs)
    numpyro.sample("x", dist.Normal(radius * jnp.cos(angle), jnp.exp(log_scale[0])))
    numpyro.sample("y", dist.Normal(radius * jnp.sin(angle), jnp.exp(log_scale[1])))


# --- the objectives, one estimate each ----------------------------------------------------------


@vigrad.program
def elbo(p):
    return jnp.mean(p.particles(1).log_w)


@vigrad.program
def iwelbo(p):
    return vigrad.log_mean_exp(p.particles(5).log_w)


def marginal_log_weight(p, n):
    """``log p(x, y, z) - log q^_N(x, y)`` for one draw ``(u, x, y)`` of the ring guide."""
    draw = p.sample(p.guide)
    xy = {"x": draw.values["x"], "y": draw.values["y"]}
    log_p = p.score(p.model, xy).log_prob
    # log q(x, y | u) for the guide's own angle: its joint density less the angle's prior density.
    terms = (draw.log_prob - p.score(angle_prior, draw.values).log_prob)[None]

    def fresh_angle(p):
        u = p.sample(angle_prior)
        return p.score(p.guide, {**xy, **u.values}).log_prob - u.log_prob

    if n > 1:
        terms = jnp.concatenate([terms, p.particles(n - 1, fresh_angle)])
    return log_p - vigrad.log_mean_exp(terms)


@vigrad.program
def hvi(p):
    return marginal_log_weight(p, 1)


@vigrad.program
def iwhvi(p):
    return marginal_log_weight(p, 5)


@vigrad.program
def diwhvi(p):
    return vigrad.log_mean_exp(p.particles(5, lambda p: marginal_log_weight(p, 5)))


def averaged(objective, n):
    """The mean of ``n`` independent estimates of ``objective`` (a minibatch of estimates)."""
    return vigrad.program(lambda p: jnp.mean(p.particles(n, objective.program)))


# name -> (guide, objective, estimates averaged per step, steps, initial values); Table 4's value.
RUNS = {
    "ELBO": (mean_field, elbo, 64, 20_000, {"loc": jnp.array([0.0, 0.0])}),
    "IWELBO(K=5)": (mean_field, iwelbo, 1, 20_000, {"loc": jnp.array([3.0, 0.0])}),
    "HVI": (ring, hvi, 64, 5_000, {}),
    "IWHVI(N=5)": (ring, iwhvi, 64, 5_000, {}),
    "DIWHVI(N=5, K=5)": (ring, diwhvi, 64, 5_000, {}),
}
PAPER = {
    "ELBO": -8.08,
    "IWELBO(K=5)": -7.75,
    "HVI": -9.75,
    "IWHVI(N=5)": -8.18,
    "DIWHVI(N=5, K=5)": -7.33,
}


def final_value(objective, guide, params, key, num_estimates):
    """Mean and standard error of ``num_estimates`` independent estimates of the objective."""
    keys = jax.random.split(key, num_estimates)
    values = -jax.jit(jax.vmap(lambda k: objective.loss(k, params, model, guide, Z_OBS)))(keys)
    values = np.asarray(values)
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(num_estimates))


def guide_samples(guide, params, key, n):
    def one(k):
        tr = trace(seed(substitute(guide, data=params), k)).get_trace(Z_OBS)
        return jnp.stack([tr["x"]["value"], tr["y"]["value"]])

    return np.asarray(jax.vmap(one)(jax.random.split(key, n)))


def run(steps: int | None, lr: float, num_eval: int, seed_: int, progress: bool):
    key = jax.random.key(seed_)
    results = {}
    for i, (name, (guide, objective, batch, paper_steps, init)) in enumerate(RUNS.items()):
        fit_key, eval_key = jax.random.split(jax.random.fold_in(key, i))
        num_steps = paper_steps if steps is None else steps
        result = vigrad.fit(
            model, guide, averaged(objective, batch), optax.sgd(lr), num_steps, fit_key, Z_OBS,
            init_values=init, progress_bar=progress,
        )  # fmt: skip
        if num_eval > 0:
            mean, se = final_value(objective, guide, result.params, eval_key, num_eval)
        else:
            # The estimates of the last tenth of training, without compiling an evaluation.
            tail = -np.asarray(result.losses[-max(1, num_steps // 10) :])
            mean, se = float(tail.mean()), float(tail.std() / np.sqrt(tail.size))
        results[name] = (mean, se, guide, result)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="SGD steps per objective (default: the paper's, 20 000 mean-field, 5 000 hierarchical)",
    )
    parser.add_argument("--lr", type=float, default=1e-3, help="SGD learning rate")
    parser.add_argument(
        "--eval",
        type=int,
        default=5000,
        help="estimates for the final value (0: the last tenth of the training estimates)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default=None, help="write guide samples to this image file")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    results = run(args.steps, args.lr, args.eval, args.seed, not args.no_progress)
    schedule = "the paper's schedule" if args.steps is None else f"{args.steps} steps each"
    print(f"noisy cone, z = {Z_OBS}, SGD({args.lr}), {schedule}")
    print(f"| {'objective':<17} | {'value':>8} | {'std. error':>10} | {'paper':>6} |")
    print(f"|{'-' * 19}|{'-' * 10}|{'-' * 12}|{'-' * 8}|")
    for name, (mean, se, _, _) in results.items():
        print(f"| {name:<17} | {mean:>8.2f} | {se:>10.3f} | {PAPER[name]:>6.2f} |")

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
