"""vigrad: unbiased per-site gradient estimators for variational inference on NumPyro models."""

from vigrad.diagnostics import (
    Comparison,
    GradientStats,
    Selection,
    compare_estimators,
    gradient_variance,
    khat_message,
    log_importance_weights,
    plot_comparison,
    psis_khat,
    select_estimators,
    to_inference_data,
)
from vigrad.errors import DataError, EstimatorError, ModelGuideMismatchError, VigradError
from vigrad.estimators.base import Estimator
from vigrad.estimators.control_variates import ControlVariate, Learned, LeaveOneOut, MovingAverage
from vigrad.estimators.enum import Enumerate
from vigrad.estimators.path import PathGradient
from vigrad.estimators.reparam import Reparam
from vigrad.estimators.score import Score
from vigrad.infer.fit import FitResult, NonFiniteLossWarning, fit
from vigrad.objectives.base import Objective
from vigrad.objectives.dreg import DReG
from vigrad.objectives.elbo import ELBO
from vigrad.objectives.hvi import DIWHVI, HVI, IWHVI, with_reverse
from vigrad.objectives.iwelbo import IWELBO, VIMCO
from vigrad.objectives.program import Program, objective
from vigrad.objectives.renyi import RenyiELBO
from vigrad.objectives.rws import RWS

__all__ = [
    "DIWHVI",
    "HVI",
    "IWHVI",
    "with_reverse",
    "Comparison",
    "GradientStats",
    "Selection",
    "compare_estimators",
    "gradient_variance",
    "khat_message",
    "log_importance_weights",
    "plot_comparison",
    "psis_khat",
    "select_estimators",
    "to_inference_data",
    "ControlVariate",
    "DataError",
    "DReG",
    "ELBO",
    "Enumerate",
    "IWELBO",
    "Estimator",
    "FitResult",
    "NonFiniteLossWarning",
    "fit",
    "objective",
    "EstimatorError",
    "Learned",
    "LeaveOneOut",
    "ModelGuideMismatchError",
    "MovingAverage",
    "Objective",
    "PathGradient",
    "Program",
    "Reparam",
    "RenyiELBO",
    "RWS",
    "Score",
    "VIMCO",
    "VigradError",
]
