"""Hierarchical VAEs (1, 2 and 3 stochastic layers) on binarised digits: RT vs R2-G2.

Inference is bottom-up, q(z1|x) q(z2|z1) ...; the generative model is top-down,
p(z_L) ... p(z1|z2) p(x|z1). The first layer of the network that each latent feeds in the generative
model is a linear map declared with ``vigrad.nn.latent_linear``; R2-G2 (``vigrad.R2G2()`` on every
latent) applies there. R2-G2 changes the gradient only where that map loses directions of the latent
(its width is below the latent's dimension), so the first layer after latent l has half its width:
latents (32, 16, 8), first layers (16, 8, 4), other hidden layers 64 wide.

Measures in one run: gradient variance of the encoder and the declared map per latent layer at the
same parameters (the R2-G2 run, seed 0, end of each epoch), median step times (interleaved rounds),
and the test negative ELBO per point over the first epochs for several seeds.

Usage: python benchmarks/r2g2/bench_vae.py --layers 1 2 3
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
from numpyro.infer import SVI

from vigrad import ELBO, Reparam
from vigrad.estimators.r2g2 import R2G2
from vigrad.nn import latent_linear

LATENTS = (32, 16, 8)
HIDDEN = 64


def weight(name: str, shape: tuple[int, int]) -> jax.Array:
    return numpyro.param(
        name, lambda key: jax.random.normal(key, shape) / np.sqrt(shape[0]).astype(np.float32)
    )


def bias(name: str, size: int) -> jax.Array:
    return numpyro.param(name, jnp.zeros(size))


def build(num_layers: int, estimator, n_scale: float):
    d = LATENTS[:num_layers]
    first = tuple(k // 2 for k in d)

    def model(x):
        b = x.shape[0]
        with numpyro.plate("data", b), numpyro.handlers.scale(scale=n_scale / b):
            top = num_layers
            z = numpyro.sample(f"z{top}", dist.Normal(0.0, 1.0).expand((d[-1],)).to_event(1))
            for layer in range(top, 0, -1):
                w = weight(f"dec{layer}_first", (d[layer - 1], first[layer - 1]))
                h = jnp.tanh(latent_linear(f"z{layer}", z, w) + bias(f"dec{layer}_b0", w.shape[1]))
                h = jnp.tanh(
                    h @ weight(f"dec{layer}_w1", (h.shape[-1], HIDDEN))
                    + bias(f"dec{layer}_b1", HIDDEN)
                )
                if layer == 1:
                    logits = h @ weight("dec1_out", (HIDDEN, x.shape[-1])) + bias(
                        "dec1_bout", x.shape[-1]
                    )
                    numpyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)
                else:
                    k = d[layer - 2]
                    out = h @ weight(f"dec{layer}_out", (HIDDEN, 2 * k)) + bias(
                        f"dec{layer}_bout", 2 * k
                    )
                    scale = jax.nn.softplus(out[..., k:]) + 1e-3
                    z = numpyro.sample(
                        f"z{layer - 1}", dist.Normal(out[..., :k], scale).to_event(1)
                    )

    def guide(x):
        b = x.shape[0]
        h = x
        with numpyro.plate("data", b), numpyro.handlers.scale(scale=n_scale / b):
            for layer in range(1, num_layers + 1):
                k = d[layer - 1]
                hid = jnp.tanh(
                    h @ weight(f"enc{layer}_w", (h.shape[-1], HIDDEN))
                    + bias(f"enc{layer}_b", HIDDEN)
                )
                out = hid @ weight(f"enc{layer}_out", (HIDDEN, 2 * k)) + bias(
                    f"enc{layer}_bout", 2 * k
                )
                scale = jax.nn.softplus(out[..., k:] - 2.0) + 1e-3
                h = numpyro.sample(
                    f"z{layer}",
                    dist.Normal(out[..., :k], scale).to_event(1),
                    infer={"estimator": estimator},
                )

    return model, guide


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--var-keys", type=int, default=64)
    parser.add_argument("--time-rounds", type=int, default=5)
    parser.add_argument("--time-steps", type=int, default=10)
    args = parser.parse_args()

    xtr, _, xte, _ = digits()
    xtr, xte = (xtr > 0.5).astype(np.float32), (xte > 0.5).astype(np.float32)
    n = len(xtr)
    fixed = (jnp.asarray(xtr[: args.batch_size]),)
    estimators = {"rt": Reparam(), "r2g2": R2G2()}
    results = {}
    for num_layers in args.layers:
        built = {e: build(num_layers, est, n) for e, est in estimators.items()}
        svis = {e: SVI(m, g, adam(args.lr), ELBO()) for e, (m, g) in built.items()}
        updates = {e: jax.jit(svi.update) for e, svi in svis.items()}
        test_model, test_guide = build(num_layers, Reparam(), float(len(xte)))
        test_elbo = ELBO(num_particles=16)
        test_loss = jax.jit(
            lambda params, key, tm=test_model, tg=test_guide, te=test_elbo: (
                te.loss(key, params, tm, tg, jnp.asarray(xte)) / len(xte)
            )
        )
        states = {e: svis[e].init(jax.random.PRNGKey(0), *fixed) for e in estimators}
        times = step_times(updates, states, fixed, args.time_rounds, args.time_steps)

        groups = {f"z{k}": (f"enc{k}_", f"dec{k}_first") for k in range(1, num_layers + 1)}
        variances = {
            f"{g} {part}": {e: [] for e in estimators}
            for g in groups
            for part in ("encoder", "map")
        }

        def record(state, groups=groups, variances=variances, svis=svis):
            for e in estimators:
                v = gradient_variance(svis[e], state, fixed, args.var_keys, jax.random.PRNGKey(99))
                for g, (enc, dec) in groups.items():
                    variances[f"{g} encoder"][e].append(
                        sum(val for name, val in v.items() if name.startswith(enc))
                    )
                    variances[f"{g} map"][e].append(v[dec])

        curves = {e: [] for e in estimators}
        for seed in range(args.seeds):
            for e in estimators:
                rng = np.random.default_rng(seed)
                state = svis[e].init(jax.random.PRNGKey(seed), *fixed)
                key = jax.random.PRNGKey(5000 + seed)
                track = seed == 0 and e == "r2g2"
                values = [float(test_loss(svis[e].get_params(state), key))]
                if track:
                    record(state)
                for _ in range(args.epochs):
                    for idx in minibatches(rng, n, args.batch_size):
                        state, _ = updates[e](state, jnp.asarray(xtr[idx]))
                    values.append(float(test_loss(svis[e].get_params(state), key)))
                    if track:
                        record(state)
                curves[e].append(values)
                print(
                    f"L={num_layers} seed {seed} {e}: test neg. ELBO {values[-1]:.3f}", flush=True
                )

        epochs = list(range(args.epochs + 1))
        out = HERE / "measured"
        plot_curves(
            out / f"vae{num_layers}_test_neg_elbo.png",
            epochs,
            curves,
            "epoch",
            "test negative ELBO / point",
            f"{num_layers}-layer VAE on digits ({args.seeds} seeds, mean ± s.e.)",
        )
        plot_variance(
            out / f"vae{num_layers}_variance.png", epochs, variances, f"{num_layers}-layer VAE"
        )
        results[num_layers] = {
            "step_time_s": times,
            "variances": variances,
            "test_neg_elbo": curves,
        }
        print(
            f"L={num_layers} step time ms: "
            + ", ".join(f"{e} {1e3 * t:.2f}" for e, t in times.items())
        )
        for group, per in variances.items():
            r = np.asarray(per["r2g2"]) / np.asarray(per["rt"])
            print(f"  {group:12s} r2g2/rt variance: " + " ".join(f"{x:.3g}" for x in r))
    write_json(HERE / "measured" / "vae.json", {"args": vars(args), "results": results})


if __name__ == "__main__":
    main()
