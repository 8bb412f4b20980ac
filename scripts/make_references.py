"""Write reference posteriors for the zoo models that name a REFERENCE file: long NUTS runs.

The files go beside the models, in vigrad/zoo/models/reference/ (or $VIGRAD_MODELS/reference/).

    .venv/bin/python scripts/make_references.py [MODEL ...] [--samples 20000] [--chains 4]

Each reference stores, per latent and deterministic site, the posterior mean and standard deviation
(flattened over the site's shape), with the NUTS settings, the worst split R-hat and the smallest
bulk ESS, so a reader can judge it. Beside the JSON file, ``<name>.draws.npz`` keeps
``--keep`` draws per site, thinned evenly across the pooled chains, so that plots compare a fit's
marginals with the reference's own histogram rather than with a Gaussian of the same mean and sd.
"""

import argparse
import json

import arviz as az
import jax
import numpy as np
from numpyro.infer import MCMC, NUTS

from vigrad.zoo import list_models, load_model


def reference(name: str, num_samples: int, num_chains: int, seed: int, keep: int) -> None:
    zm = load_model(name)
    data = dict(zm.load_data())
    mcmc = MCMC(
        NUTS(zm.model, target_accept_prob=0.95),
        num_warmup=num_samples // 2,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method="sequential",
        progress_bar=False,
    )
    mcmc.run(jax.random.key(seed), **data)
    samples = mcmc.get_samples(group_by_chain=True)
    idata = az.from_dict(posterior={k: np.asarray(v) for k, v in samples.items()})
    summary = az.summary(idata, kind="diagnostics")
    sites, kept = {}, {}
    for k, v in samples.items():
        flat = np.asarray(v).reshape(v.shape[0] * v.shape[1], -1)
        thin = np.linspace(0, flat.shape[0] - 1, min(keep, flat.shape[0])).astype(int)
        kept[k] = flat[thin].astype(np.float32)
        sites[k] = {
            "shape": list(v.shape[2:]),
            "mean": flat.mean(0).tolist(),
            "sd": flat.std(0, ddof=1).tolist(),
        }
    out = {
        "method": f"NUTS(target_accept_prob=0.95), {num_chains} chains x {num_samples} draws, "
        f"{num_samples // 2} warm-up, seed {seed}",
        "max_r_hat": float(summary["r_hat"].max()),
        "min_ess_bulk": float(summary["ess_bulk"].min()),
        "divergences": int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum()),
        "sites": sites,
    }
    path = zm.reference_path
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    np.savez_compressed(path.with_suffix(".draws.npz"), **kept)
    print(
        f"{name}: wrote {path} (max R-hat {out['max_r_hat']:.3f}, "
        f"min bulk ESS {out['min_ess_bulk']:.0f}, divergences {out['divergences']})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*")
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=int, default=2000, help="thinned draws kept per site")
    args = parser.parse_args()
    jax.config.update("jax_enable_x64", True)
    names = args.models or [n for n in list_models() if load_model(n).reference_path]
    for name in names:
        reference(name, args.samples, args.chains, args.seed, args.keep)


if __name__ == "__main__":
    main()
