"""vigrad: unbiased per-site gradient estimators for variational inference on NumPyro models.

The public names are imported on first use (PEP 562), so ``import vigrad`` and the ``vigrad``
command start without loading JAX, NumPyro or ArviZ.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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
    from vigrad.estimators.control_variates import (
        ControlVariate,
        Learned,
        LeaveOneOut,
        MovingAverage,
    )
    from vigrad.estimators.enum import Enumerate
    from vigrad.estimators.flow_path import FlowPathGradient
    from vigrad.estimators.mvd import MVD
    from vigrad.estimators.path import PathGradient
    from vigrad.estimators.r2g2 import R2G2, LocalReparam
    from vigrad.estimators.reparam import Reparam
    from vigrad.estimators.score import Score
    from vigrad.infer.fit import FitResult, NonFiniteLossWarning, fit
    from vigrad.infer.stream import BatchIterator, Minibatches
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

# Where each public name is defined; tests/test_cli.py checks this against the imports above.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "vigrad.diagnostics": (
        "Comparison",
        "GradientStats",
        "Selection",
        "UnbiasedCheck",
        "check_unbiased",
        "compare_estimators",
        "gradient_variance",
        "khat_message",
        "log_importance_weights",
        "plot_comparison",
        "psis_khat",
        "select_estimators",
        "to_inference_data",
    ),
    "vigrad.errors": (
        "CheckpointError",
        "DataError",
        "EstimatorError",
        "ModelGuideMismatchError",
        "VigradError",
    ),
    "vigrad.estimators.base": ("Estimator",),
    "vigrad.estimators.control_variates": (
        "ControlVariate",
        "Learned",
        "LeaveOneOut",
        "MovingAverage",
    ),
    "vigrad.estimators.enum": ("Enumerate",),
    "vigrad.estimators.flow_path": ("FlowPathGradient",),
    "vigrad.estimators.mvd": ("MVD",),
    "vigrad.estimators.path": ("PathGradient",),
    "vigrad.estimators.r2g2": ("R2G2", "LocalReparam"),
    "vigrad.estimators.reparam": ("Reparam",),
    "vigrad.estimators.score": ("Score",),
    "vigrad.infer.fit": ("FitResult", "NonFiniteLossWarning", "fit"),
    "vigrad.infer.stream": ("BatchIterator", "Minibatches"),
    "vigrad.objectives.base": ("Objective",),
    "vigrad.objectives.context": ("Draw", "Particles", "ProgramContext"),
    "vigrad.objectives.dreg": ("DReG",),
    "vigrad.objectives.elbo": ("ELBO",),
    "vigrad.objectives.hvi": ("DIWHVI", "HVI", "IWHVI", "with_reverse"),
    "vigrad.objectives.iwelbo": ("IWELBO", "VIMCO"),
    "vigrad.objectives.program": ("Program", "log_mean_exp", "objective", "program"),
    "vigrad.objectives.renyi": ("RenyiELBO",),
    "vigrad.objectives.rws": ("RWS",),
    "vigrad.objectives.transform": ("Estimate",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
# Subpackages reachable as attributes after a bare ``import vigrad``, as when it imported them all.
_SUBMODULES = frozenset(
    (
        "diagnostics",
        "errors",
        "estimators",
        "flows",
        "infer",
        "nn",
        "objectives",
        "registry",
        "sgmcmc",
        "zoo",
    )
)

__all__ = [
    "BatchIterator",
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
    "Minibatches",
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


def __getattr__(name: str):
    if name in _MODULE_OF:
        value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"vigrad.{name}")
    else:
        raise AttributeError(f"module 'vigrad' has no attribute '{name}'")
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_SUBMODULES})
