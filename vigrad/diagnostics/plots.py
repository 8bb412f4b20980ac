"""Plots of diagnostics (matplotlib, drawn off-screen)."""

from __future__ import annotations

import math
import os
from typing import Any

from vigrad.diagnostics.select import Comparison


def plot_comparison(
    comparison: Comparison, path: str | os.PathLike | None = None, *, title: str | None = None
) -> Any:
    """Bar charts of a :class:`~vigrad.diagnostics.select.Comparison`: per site and candidate, the
    gradient variance and the product variance x time (log scales), and the time per estimate
    (lower is better in all three).

    Candidates that cannot serve a site are left out; the lowest variance x cost of each site is
    drawn in a darker colour.

    Args:
        comparison: what :func:`~vigrad.compare_estimators` returned.
        path: if given, the figure is saved there (the format follows the extension).
        title: the figure's title.

    Returns:
        The matplotlib ``Figure``.
    """
    rows = [r for r in comparison.rows if r.usable]
    best = {id(comparison.best(s)) for s in comparison.sites}
    labels = [f"{r.site}: {r.name}" for r in rows]
    tiny = 1e-300
    panels = [
        ("gradient variance", [max(r.variance, tiny) for r in rows], "log"),
        ("ms per estimate", [(r.seconds or math.nan) * 1e3 for r in rows], "linear"),
        ("variance x ms", [max(r.efficiency_cost * 1e3, tiny) for r in rows], "log"),
    ]
    height = 1.0 + 0.35 * max(1, len(rows))
    if path is None:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(12, height))
    else:
        # Saved without pyplot: no backend is chosen or changed, no window is opened.
        from matplotlib.figure import Figure

        fig = Figure(figsize=(12, height))
    axes = fig.subplots(1, 3, sharey=True)
    colours = ["tab:blue" if id(r) in best else "lightsteelblue" for r in rows]
    positions = list(range(len(rows)))[::-1]
    for ax, (name, values, scale) in zip(axes, panels, strict=True):
        ax.barh(positions, values, color=colours)
        ax.set_xscale(scale)
        ax.set_title(name)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(positions, labels)
    fig.suptitle(
        title
        or f"{comparison.objective}, {comparison.num_particles} particle(s), "
        f"{comparison.num_samples} estimates per candidate"
    )
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
