"""Diagnostics: ArviZ conversion, PSIS k-hat, gradient variance and estimator selection."""

from vigrad.diagnostics.gradients import GradientStats, gradient_variance
from vigrad.diagnostics.inference_data import to_inference_data
from vigrad.diagnostics.plots import plot_comparison
from vigrad.diagnostics.psis import khat_message, log_importance_weights, psis_khat, site_khats
from vigrad.diagnostics.psis_summary import psis_summary
from vigrad.diagnostics.select import (
    Comparison,
    Selection,
    compare_estimators,
    default_candidates,
    select_estimators,
)
from vigrad.diagnostics.unbiased import UnbiasedCheck, check_unbiased

__all__ = [
    "check_unbiased",
    "Comparison",
    "GradientStats",
    "Selection",
    "compare_estimators",
    "default_candidates",
    "gradient_variance",
    "khat_message",
    "log_importance_weights",
    "plot_comparison",
    "psis_khat",
    "psis_summary",
    "select_estimators",
    "site_khats",
    "to_inference_data",
    "UnbiasedCheck",
]
