"""PSIS-corrected posterior means and sds from a variational fit (Yao, Vehtari, Simpson & Gelman
2018, "Yes, but did it work?: Evaluating variational inference", ICML).

The guide draws z_s ~ q with log weights log w_s = log p(x, z_s) − log q(z_s) estimate posterior
expectations by self-normalised importance sampling, E_p[h] ≈ Σ w̃_s h(z_s) / Σ w̃_s, with w̃ the
Pareto-smoothed weights. Where k-hat < 0.7 this estimate is reliable and corrects the guide's own
bias (a too-narrow or misplaced guide); from 0.7 on it is not, and only the raw VI summary is
given. The means and sds here are those of ``E_p[z]`` and ``sqrt(E_p[z²] − E_p[z]²)``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from vigrad.diagnostics.psis import BAD


def psis_summary(idata: Any, var_names: list[str] | None = None) -> Any:
    """Raw and PSIS-reweighted means and sds of every element of the posterior sites.

    Args:
        idata: what :func:`vigrad.to_inference_data` returned for a variational fit (it needs
            ``sample_stats.log_weight``).
        var_names: sites to summarise (default: all posterior sites).

    Returns:
        A ``pandas.DataFrame`` indexed like ``az.summary`` (``site``, ``site[i]``) with columns
        ``mean``, ``sd``, ``psis_mean``, ``psis_sd``; the PSIS columns are NaN when k-hat is 0.7
        or more, or not defined (a point-mass guide). ``df.attrs["khat"]`` holds k-hat.
    """
    import arviz as az
    import pandas as pd

    log_w = np.asarray(idata.sample_stats["log_weight"].values, np.float64).reshape(-1)
    khat = float(idata.posterior.attrs.get("psis_khat", np.nan))
    usable = np.isfinite(khat) and khat < BAD
    weights = None
    if usable:
        with warnings.catch_warnings(), np.errstate(invalid="ignore", over="ignore"):
            warnings.simplefilter("ignore")
            smoothed, _ = az.psislw(log_w - log_w.max())
        weights = np.exp(smoothed - np.max(smoothed))
        weights /= weights.sum()
    rows = {}
    for name in var_names or list(idata.posterior.data_vars):
        x = np.asarray(idata.posterior[name].values, np.float64)
        flat = x.reshape(-1, *x.shape[2:]).reshape(log_w.shape[0], -1)
        for j, index in enumerate(np.ndindex(*x.shape[2:])):
            label = name if not index else f"{name}[{', '.join(map(str, index))}]"
            v = flat[:, j]
            row = {"mean": v.mean(), "sd": v.std(ddof=1), "psis_mean": np.nan, "psis_sd": np.nan}
            if weights is not None:
                m = float(np.sum(weights * v))
                row["psis_mean"] = m
                row["psis_sd"] = float(np.sqrt(max(np.sum(weights * (v - m) ** 2), 0.0)))
            rows[label] = row
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.attrs["khat"] = khat
    return df
