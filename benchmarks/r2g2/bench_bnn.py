"""Bayesian MLP and CNN on sklearn's digits: RT vs LRT vs R2-G2 per layer.

Measures, in one run:
* gradient variance per layer (weight loc and rho parameters) of each estimator at the same
  parameters (those of the R2-G2 run, seed 0, at the end of each epoch), over --var-keys keys with a
  fixed minibatch;
* median step time of each estimator (interleaved rounds), as a ratio to RT;
* test log-likelihood and negative ELBO per training point over the first epochs, several seeds.

Usage: python benchmarks/r2g2/bench_bnn.py --arch mlp   (or --arch cnn)
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from common import (
    HERE,
    adam,
    digits,
    gradient_variance,
    minibatches,
    plot_curves,
    plot_variance,
    step_times,
    write_json,
)
from numpyro.infer import SVI, Predictive
from numpyro.infer.util import log_likelihood

from vigrad import ELBO
from vigrad.estimators.r2g2 import R2G2
from vigrad.nn import Conv2d, Dense

CHOICES = {"mlp": ("rt", "lrt", "r2g2"), "cnn": ("rt", "r2g2")}


def estimator(name: str):
    return R2G2(per_example=True) if name == "r2g2" else name


def build(arch: str, est: str, n_train: int, hidden: int, init_scale: float, channels=(8, 16)):
    e = estimator(est)
    if arch == "mlp":
        layers = [
            Dense("fc1", 64, hidden, estimator=e, init_scale=init_scale),
            Dense("fc2", hidden, hidden, estimator=e, init_scale=init_scale),
            Dense("fc3", hidden, 10, estimator=e, init_scale=init_scale),
        ]

        def forward(x):
            h = jax.nn.relu(layers[0](x))
            h = jax.nn.relu(layers[1](h))
            return layers[2](h)

    else:
        layers = [
            Conv2d("c1", 1, channels[0], 3, estimator=e, init_scale=init_scale),
            Conv2d("c2", channels[0], channels[1], 3, stride=2, estimator=e, init_scale=init_scale),
            Dense("fc", 4 * 4 * channels[1], 10, estimator=e, init_scale=init_scale),
        ]

        def forward(x):
            h = jax.nn.relu(layers[0](x.reshape(-1, 8, 8, 1)))
            h = jax.nn.relu(layers[1](h))
            return layers[2](h.reshape(h.shape[0], -1))

    def model(x, y=None):
        logits = forward(x)
        # Minibatches stand for the whole training set.
        with numpyro.plate("data", x.shape[0]), numpyro.handlers.scale(scale=n_train / x.shape[0]):
            numpyro.sample("y", dist.Categorical(logits=logits), obs=y)

    def guide(x, y=None):
        for layer in layers:
            layer.guide()

    return model, guide, [layer.weight_site for layer in layers]


def make_eval(model, guide, num_samples: int):
    @jax.jit
    def test_log_lik(params, key, x, y):
        k1 = key
        draws = Predictive(guide, params=params, num_samples=num_samples)(k1, x)
        ll = log_likelihood(model, draws, x, y)["y"]  # [S, n]
        return jnp.mean(jax.scipy.special.logsumexp(ll, axis=0) - jnp.log(num_samples))

    return test_log_lik


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", choices=("mlp", "cnn"), default="mlp")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=100)
    parser.add_argument("--channels", type=int, nargs=2, default=[8, 16])
    parser.add_argument("--init-scale", type=float, default=0.05)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--var-keys", type=int, default=64)
    parser.add_argument("--time-rounds", type=int, default=5)
    parser.add_argument("--time-steps", type=int, default=10)
    args = parser.parse_args()

    xtr, ytr, xte, yte = digits()
    n = len(ytr)
    names = CHOICES[args.arch]
    built = {
        e: build(args.arch, e, n, args.hidden, args.init_scale, tuple(args.channels)) for e in names
    }
    sites = built[names[0]][2]
    svis = {e: SVI(m, g, adam(args.lr), ELBO()) for e, (m, g, _) in built.items()}
    updates = {e: jax.jit(svi.update) for e, svi in svis.items()}
    evals = {e: make_eval(m, g, 16) for e, (m, g, _) in built.items()}
    fixed = (jnp.asarray(xtr[: args.batch_size]), jnp.asarray(ytr[: args.batch_size]))

    # Step times, interleaved, at the initial parameters.
    states = {e: svis[e].init(jax.random.PRNGKey(0), *fixed) for e in names}
    times = step_times(updates, states, fixed, args.time_rounds, args.time_steps)

    curves_ll = {e: [] for e in names}
    curves_elbo = {e: [] for e in names}
    variances = {site: {f"{e} {p}": [] for e in names for p in ("loc", "rho")} for site in sites}
    var_key = jax.random.PRNGKey(1234)

    def record_variance(state):
        for e in names:
            v = gradient_variance(svis[e], state, fixed, args.var_keys, var_key)
            for site in sites:
                for p in ("loc", "rho"):
                    variances[site][f"{e} {p}"].append(v[f"{site}_{p}"])

    for seed in range(args.seeds):
        for e in names:
            rng = np.random.default_rng(seed)
            state = svis[e].init(jax.random.PRNGKey(seed), *fixed)
            key = jax.random.PRNGKey(10_000 + seed)
            lls = [float(evals[e](svis[e].get_params(state), key, xte, yte))]
            elbos = [float("nan")]
            track = seed == 0 and e == "r2g2"
            if track:
                record_variance(state)
            for _ in range(args.epochs):
                losses = []
                for idx in minibatches(rng, n, args.batch_size):
                    state, loss = updates[e](state, jnp.asarray(xtr[idx]), jnp.asarray(ytr[idx]))
                    losses.append(float(loss))
                elbos.append(float(np.mean(losses)) / n)
                lls.append(float(evals[e](svis[e].get_params(state), key, xte, yte)))
                if track:
                    record_variance(state)
            curves_ll[e].append(lls)
            curves_elbo[e].append(elbos)
            print(f"seed {seed} {e}: test log-lik {lls[-1]:.4f}", flush=True)

    epochs = list(range(args.epochs + 1))
    out = HERE / "measured"
    write_json(
        out / f"{args.arch}.json",
        {
            "args": vars(args),
            "step_time_s": times,
            "variances": variances,
            "test_log_lik": curves_ll,
            "neg_elbo_per_point": curves_elbo,
        },
    )
    plot_curves(
        out / f"{args.arch}_test_loglik.png",
        epochs,
        curves_ll,
        "epoch",
        "test log-likelihood",
        f"Bayesian {args.arch.upper()} on digits ({args.seeds} seeds, mean ± s.e.)",
    )
    plot_curves(
        out / f"{args.arch}_neg_elbo.png",
        epochs[1:],
        {e: [c[1:] for c in runs] for e, runs in curves_elbo.items()},
        "epoch",
        "training loss (neg. ELBO / point)",
        f"Bayesian {args.arch.upper()} on digits",
    )
    rho_only = {
        site: {k: v for k, v in d.items() if k.endswith("rho")} for site, d in variances.items()
    }
    plot_variance(out / f"{args.arch}_variance_rho.png", epochs, rho_only, "scale (rho) gradients")
    loc_only = {
        site: {k: v for k, v in d.items() if k.endswith("loc")} for site, d in variances.items()
    }
    plot_variance(out / f"{args.arch}_variance_loc.png", epochs, loc_only, "mean (loc) gradients")

    print("step time (ms) and ratio to rt:")
    for e in names:
        print(f"  {e:5s} {1e3 * times[e]:8.2f}  {times[e] / times['rt']:.2f}")
    print("variance ratio to rt (epoch 0 .. last), per layer:")
    for site in sites:
        for e in names:
            for p in ("loc", "rho"):
                r = np.asarray(variances[site][f"{e} {p}"]) / np.asarray(variances[site][f"rt {p}"])
                print(f"  {site:6s} {e:5s} {p}: " + " ".join(f"{x:.3g}" for x in r))


if __name__ == "__main__":
    main()
