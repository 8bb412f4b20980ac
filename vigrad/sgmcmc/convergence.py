"""Convergence check of a multi-chain run: rank-normalised split R-hat, bulk and tail ESS.

Vehtari, Gelman, Simpson, Carpenter & Bürkner (2021, "Rank-normalization, folding, and
localization: an improved R-hat for assessing convergence of MCMC", Bayesian Analysis) recommend
using draws only when, for every scalar quantity,

* the rank-normalised split R-hat is below 1.01 (chains, and halves of chains, agree), and
* the bulk and the tail effective sample sizes are each at least 100 per chain (400 for the usual
  four chains), so that the mean, the sd and the quantiles are estimated to useful precision.

These are ArviZ's thresholds (``az.summary`` computes the same three numbers). R-hat needs at least
two chains; with one chain only the ESS is checked and the report says so.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

RHAT_MAX = 1.01
"""Largest acceptable rank-normalised split R-hat (Vehtari et al. 2021)."""
ESS_PER_CHAIN = 100
"""Smallest acceptable bulk and tail ESS per chain (Vehtari et al. 2021)."""


class ConvergenceWarning(UserWarning):
    """Draws of a stochastic-gradient MCMC run that fail the R-hat or ESS thresholds."""


class Convergence(NamedTuple):
    """The worst R-hat and ESS over every scalar of every site, and what to do about them.

    Attributes:
        ok: every scalar passes both thresholds.
        max_rhat: the largest rank-normalised split R-hat (NaN with one chain).
        min_ess_bulk, min_ess_tail: the smallest bulk and tail ESS.
        worst: the scalar (``"site[i]"``) with the largest R-hat, or the smallest ESS with one chain.
        ess_required: the ESS each scalar needs (``ESS_PER_CHAIN`` x chains).
        message: a one-paragraph reading: "converged: ..." or "NOT CONVERGED: ... fix: ...".
    """

    ok: bool
    max_rhat: float
    min_ess_bulk: float
    min_ess_tail: float
    worst: str
    ess_required: int
    message: str


def _per_scalar(samples: dict[str, np.ndarray], num_chains: int) -> dict[str, np.ndarray]:
    """``bulk``, ``tail`` and ``rhat`` -> one value per varying scalar, and ``label``."""
    import arviz as az

    out: dict[str, list] = {"label": [], "bulk": [], "tail": [], "rhat": []}
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore")
        for name, value in samples.items():
            x = np.asarray(value, dtype=np.float64)
            flat = x.reshape(x.shape[0], x.shape[1], -1)
            # A constant element (a fixed site, a degenerate coordinate) has no R-hat or ESS.
            varying = np.ptp(flat, axis=(0, 1)) > 0
            if not varying.any():
                continue
            ds = az.convert_to_dataset({"v": flat[:, :, varying]})
            out["bulk"].append(az.ess(ds, method="bulk")["v"].values)
            out["tail"].append(az.ess(ds, method="tail")["v"].values)
            if num_chains > 1:
                out["rhat"].append(az.rhat(ds, method="rank")["v"].values)
            else:
                out["rhat"].append(np.full(int(varying.sum()), np.nan))
            indices = [i for i, v in zip(np.ndindex(*x.shape[2:]), varying, strict=True) if v]
            out["label"] += [
                name if not i else f"{name}[{', '.join(map(str, i))}]" for i in indices
            ]
    return {k: np.asarray(v) if k == "label" else np.concatenate(v) for k, v in out.items()}


def check_convergence(
    samples: dict[str, np.ndarray], *, fix: str = "run longer or tune the step size"
) -> Convergence:
    """Rank-normalised split R-hat and bulk/tail ESS of every scalar, against ArviZ's thresholds.

    Args:
        samples: site name -> draws of shape ``(num_chains, num_draws, *site_shape)``.
        fix: what the message advises when the check fails (the caller knows the sampler's knobs).

    Returns:
        :class:`Convergence`.
    """
    num_chains = next(iter(samples.values())).shape[0] if samples else 0
    required = ESS_PER_CHAIN * max(num_chains, 1)
    stats = _per_scalar(samples, num_chains)
    if not len(stats["label"]):
        return Convergence(True, np.nan, np.nan, np.nan, "", required, "no varying draws to check")
    min_bulk, min_tail = float(np.min(stats["bulk"])), float(np.min(stats["tail"]))
    rhat = stats["rhat"]
    if num_chains > 1:
        # A NaN R-hat (a chain stuck at one value) is the worst case.
        i = int(np.argmax(np.where(np.isnan(rhat), np.inf, rhat)))
        max_rhat = float(np.inf if np.isnan(rhat[i]) else rhat[i])
    else:
        i = int(np.argmin(stats["bulk"]))
        max_rhat = np.nan
    worst = str(stats["label"][i])
    rhat_ok = num_chains < 2 or (np.isfinite(max_rhat) and max_rhat <= RHAT_MAX)
    ess_ok = min_bulk >= required and min_tail >= required
    where = f"max R-hat {max_rhat:.3f} ({worst})" if num_chains > 1 else f"one chain ({worst})"
    numbers = f"{where}, min bulk ESS {min_bulk:.0f}, min tail ESS {min_tail:.0f}"
    thresholds = f"R-hat <= {RHAT_MAX} and ESS >= {required} ({ESS_PER_CHAIN} per chain)"
    if rhat_ok and ess_ok:
        message = f"converged: {numbers}; within {thresholds}"
        if num_chains < 2:
            message += "; R-hat not checked with one chain, run several chains to check it"
    else:
        problems = []
        if not rhat_ok:
            problems.append("the chains disagree (R-hat too large)")
        if not ess_ok:
            problems.append("too few effective draws (ESS too small)")
        message = (
            f"NOT CONVERGED: {' and '.join(problems)}: {numbers}; needs {thresholds}. "
            f"Do not use these draws as posterior samples; fix: {fix}"
        )
    return Convergence(rhat_ok and ess_ok, max_rhat, min_bulk, min_tail, worst, required, message)
