"""vigrad: unbiased per-site gradient estimators for variational inference on NumPyro models."""

from vigrad import flows, nn, sgmcmc
from vigrad.diagnostics import (
    Comparison,
    GradientStats,
    Selection,
    UnbiasedCheck,
    check_unbiased,
    compare_estimators,
    gradient_variance,
    khat_message,
    log_importance_weights,
    plot_comparison,
    psis_khat,
    select_estimators,
    to_inference_data,
)
from vigrad.errors import (
    CheckpointError,
    DataError,
    EstimatorError,
    ModelGuideMismatchError,
    VigradError,
)
from vigrad.estimators.base import Estimator
from vigrad.estimators.control_variates import ControlVariate, Learned, LeaveOneOut, MovingAverage
from vigrad.estimators.enum import Enumerate
from vigrad.estimators.flow_path import FlowPathGradient
from vigrad.estimators.mvd import MVD
from vigrad.estimators.path import PathGradient
from vigrad.estimators.r2g2 import R2G2, LocalReparam
from vigrad.estimators.reparam import Reparam
from vigrad.estimators.score import Score
from vigrad.infer.fit import FitResult, NonFiniteLossWarning, fit
from vigrad.objectives.base import Objective
from vigrad.objectives.context import Draw, Particles, ProgramContext
from vigrad.objectives.dreg import DReG
from vigrad.objectives.elbo import ELBO
from vigrad.objectives.hvi import DIWHVI, HVI, IWHVI, with_reverse
from vigrad.objectives.iwelbo import IWELBO, VIMCO
from vigrad.objectives.program import Program, log_mean_exp, objective, program
from vigrad.objectives.renyi import RenyiELBO
from vigrad.objectives.rws import RWS
from vigrad.objectives.transform import Estimate

__all__ = [
    "check_unbiased",
    "CheckpointError",
    "compare_estimators",
    "Comparison",
    "ControlVariate",
    "DataError",
    "DIWHVI",
    "DReG",
    "Draw",
    "ELBO",
    "Enumerate",
    "Estimate",
    "Estimator",
    "EstimatorError",
    "fit",
    "FitResult",
    "FlowPathGradient",
    "flows",
    "gradient_variance",
    "GradientStats",
    "HVI",
    "IWELBO",
    "IWHVI",
    "khat_message",
    "Learned",
    "LeaveOneOut",
    "LocalReparam",
    "log_mean_exp",
    "log_importance_weights",
    "ModelGuideMismatchError",
    "MovingAverage",
    "MVD",
    "nn",
    "NonFiniteLossWarning",
    "objective",
    "Objective",
    "PathGradient",
    "plot_comparison",
    "Particles",
    "Program",
    "program",
    "ProgramContext",
    "psis_khat",
    "R2G2",
    "RenyiELBO",
    "Reparam",
    "RWS",
    "Score",
    "select_estimators",
    "Selection",
    "sgmcmc",
    "to_inference_data",
    "UnbiasedCheck",
    "VigradError",
    "VIMCO",
    "with_reverse",
]
