"""Posterior and trace plots: labels as az.summary writes them, bars for discrete sites, the
reference as measured (draws or mean ± sd), never a fitted Gaussian."""

import arviz as az
import numpy as np
from matplotlib.container import BarContainer

from vigrad.diagnostics.posterior_plots import plot_posterior, plot_trace

RNG = np.random.default_rng(0)
DRAWS = {
    "w": RNG.normal(size=(400, 2, 2)),
    "k": RNG.integers(0, 2, size=400).astype(float),  # a Bernoulli site
    "tau": RNG.gamma(1.5, size=400),  # skewed
}
REFERENCE = {
    "method": "NUTS(target_accept_prob=0.9), 4 chains",
    "sites": {"tau": {"mean": [1.5], "sd": [1.2]}, "w": {"mean": [0, 0, 0, 0], "sd": [1] * 4}},
}


def test_titles_match_the_summary_labels(tmp_path):
    fig = plot_posterior(DRAWS, tmp_path / "p.png", reference=REFERENCE)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    summary = az.summary({k: v[None] for k, v in DRAWS.items()}, kind="stats")
    assert titles == list(summary.index)
    assert (tmp_path / "p.png").stat().st_size > 0


def test_discrete_sites_are_bars_and_no_gaussian_is_fitted():
    fig = plot_posterior(DRAWS, reference=REFERENCE)
    by_title = {ax.get_title(): ax for ax in fig.axes}
    bars = [c for c in by_title["k"].containers if isinstance(c, BarContainer)]
    assert len(bars) == 1 and len(bars[0]) == 2  # two bars, at 0 and 1
    # The reference is its mean ± sd, an error bar; no density curve is drawn over the histogram.
    tau = by_title["tau"]
    assert not [line for line in tau.get_lines() if len(line.get_xdata()) > 2]
    assert any("mean ± sd" in t.get_text() for t in fig.axes[0].get_legend().get_texts())


def test_reference_draws_are_drawn_as_a_histogram():
    ref = {
        "method": "NUTS",
        "sites": {"tau": {"mean": [1.5], "sd": [1.2], "draws": RNG.gamma(1.5, size=(300, 1))}},
    }
    fig = plot_posterior({"tau": DRAWS["tau"]}, reference=ref)
    assert len(fig.axes[0].patches) > 40  # the draws' bars and the reference's step outline


def test_trace_has_a_line_per_chain(tmp_path):
    fig = plot_trace({"mu": RNG.normal(size=(3, 100, 2))}, tmp_path / "t.png")
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["mu[0]", "mu[1]"]
    assert len(fig.axes[0].get_lines()) == 3
