"""vigrad: unbiased per-site gradient estimators for variational inference on NumPyro models."""

from vigrad.errors import DataError, EstimatorError, ModelGuideMismatchError, VigradError
from vigrad.estimators.base import Estimator
from vigrad.estimators.control_variates import ControlVariate, LeaveOneOut, MovingAverage
from vigrad.estimators.path import PathGradient
from vigrad.estimators.reparam import Reparam
from vigrad.estimators.score import Score
from vigrad.infer.fit import FitResult, NonFiniteLossWarning, fit
from vigrad.objectives.base import Objective
from vigrad.objectives.elbo import ELBO

__all__ = [
    "ControlVariate",
    "DataError",
    "ELBO",
    "Estimator",
    "FitResult",
    "NonFiniteLossWarning",
    "fit",
    "EstimatorError",
    "LeaveOneOut",
    "ModelGuideMismatchError",
    "MovingAverage",
    "Objective",
    "PathGradient",
    "Reparam",
    "Score",
    "VigradError",
]
