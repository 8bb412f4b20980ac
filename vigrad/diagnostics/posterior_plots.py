"""Posterior marginals and trace plots (matplotlib, drawn off-screen).

Each scalar element gets a panel titled as ``az.summary`` labels it (``w[0, 1]``). Continuous
elements are drawn as density histograms; discrete ones (integer values) as bar charts of their
frequencies, so a Bernoulli site is two bars, not two spikes of an arbitrary bin width. A reference
is drawn as it was measured: its draws as a second histogram when there are draws, otherwise its
mean ± sd as an interval under the histogram, never as a Gaussian fitted to it (a skewed or
bounded posterior is not Gaussian).
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

MAX_PANELS = 24
"""Elements drawn per figure; larger posteriors show their first elements per site."""


def element_labels(name: str, shape: tuple[int, ...]) -> list[str]:
    """``az.summary``'s label of each element of a site of ``shape``: ``name``, ``name[i]``,
    ``name[i, j]``..."""
    return [name if not i else f"{name}[{', '.join(map(str, i))}]" for i in np.ndindex(*shape)]


def _is_discrete(v: np.ndarray) -> bool:
    return v.size > 0 and bool(np.all(np.isfinite(v))) and bool(np.all(v == np.round(v)))


def _figure(panels: int, path: Any, cols: int = 4, height: float = 2.3):
    rows = max(1, math.ceil(panels / cols))
    size = (3.1 * cols, height * rows + 0.6)
    if path is None:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=size, layout="constrained")
    else:
        from matplotlib.figure import Figure

        fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[panels:]:
        ax.axis("off")
    return fig, list(axes.flat)


def _elements(draws: dict[str, np.ndarray], per_site: int) -> list[tuple[str, str, int, Any]]:
    """(site, label, flat index, values) for the first ``per_site`` elements of each site."""
    out = []
    for name, value in draws.items():
        v = np.asarray(value)
        flat = v.reshape(v.shape[0], -1)
        labels = element_labels(name, v.shape[1:])
        for j in range(min(flat.shape[1], per_site)):
            out.append((name, labels[j], j, flat[:, j]))
    return out[:MAX_PANELS]


def plot_posterior(
    draws: dict[str, np.ndarray],
    path: str | os.PathLike | None = None,
    *,
    reference: dict | None = None,
    label: str = "draws",
    title: str = "Posterior marginals",
    per_site: int = 8,
) -> Any:
    """Marginal of every element (up to ``per_site`` per site and 24 in all).

    Args:
        draws: site name -> ``[S, *site_shape]`` draws (chains pooled).
        path: if given, the figure is saved there.
        reference: ``{"method": str, "sites": {name: {"mean": [...], "sd": [...],
            "draws": [[S_ref, n_elements]] (optional)}}}``, as the zoo's NUTS references.
        label: what the draws are (the legend's name for them).
        title: the figure's title.

    Returns:
        The matplotlib ``Figure``.
    """
    panels = _elements(draws, per_site)
    fig, axes = _figure(len(panels), path)
    ref_sites = (reference or {}).get("sites", {})
    method = (reference or {}).get("method", "reference").split("(")[0]
    for ax, (name, lab, j, v) in zip(axes, panels, strict=False):
        ref = ref_sites.get(name)
        if _is_discrete(v):
            values, counts = np.unique(v, return_counts=True)
            ax.bar(values, counts / v.size, width=0.8, alpha=0.7, label=label)
            ax.set_xticks(values if values.size <= 10 else values[:: max(1, values.size // 10)])
            ax.set_ylabel("frequency", fontsize=7)
        else:
            _, edges, _ = ax.hist(v, bins=40, density=True, alpha=0.6, label=label)
            ref_draws = None if ref is None else ref.get("draws")
            if ref_draws is not None:
                r = np.asarray(ref_draws).reshape(len(ref_draws), -1)[:, j]
                ax.hist(r, bins=edges, density=True, histtype="step", color="k", label=method)
            elif ref is not None:
                m, s = float(np.ravel(ref["mean"])[j]), float(np.ravel(ref["sd"])[j])
                y = -0.04 * ax.get_ylim()[1]
                ax.errorbar([m], [y], xerr=[s], fmt="o", color="k", ms=3, capsize=2)
                ax.plot([], [], "ko", ms=3, label=f"{method} mean ± sd")
        ax.set_title(lab, fontsize=9)
        ax.tick_params(labelsize=7)
    if panels:
        axes[0].legend(fontsize=6)
    fig.suptitle(title, fontsize=11)
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def plot_trace(
    samples: dict[str, np.ndarray],
    path: str | os.PathLike | None = None,
    *,
    title: str = "Trace (one line per chain)",
    per_site: int = 4,
) -> Any:
    """Trace plot of every element (up to ``per_site`` per site): one line per chain.

    Args:
        samples: site name -> ``[chains, draws, *site_shape]``.
        path: if given, the figure is saved there.
    """
    panels = []
    for name, value in samples.items():
        v = np.asarray(value)
        flat = v.reshape(v.shape[0], v.shape[1], -1)
        labels = element_labels(name, v.shape[2:])
        panels += [(labels[j], flat[:, :, j]) for j in range(min(flat.shape[2], per_site))]
    panels = panels[:MAX_PANELS]
    fig, axes = _figure(len(panels), path, cols=2, height=1.8)
    for ax, (lab, x) in zip(axes, panels, strict=False):
        for c in range(x.shape[0]):
            ax.plot(x[c], lw=0.5, alpha=0.8, label=f"chain {c}")
        ax.set_title(lab, fontsize=9)
        ax.set_xlabel("draw", fontsize=7)
        ax.tick_params(labelsize=7)
    if panels:
        axes[0].legend(fontsize=6, ncol=2)
    fig.suptitle(title, fontsize=11)
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
