"""The named kernels: frozen dataclasses whose fields are the user's parameters and whose
``update`` and ``gradient`` properties name the update rule and the gradient estimator they
compose (:class:`vigrad.sgmcmc.kernel.Kernel`).

Step-size convention (Welling & Teh 2011): θ ← θ + (ε/2) ĝ(θ) + N(0, ε I). BlackJAX writes the same
update with h = ε/2 and noise N(0, 2h); ``SGLD(step_size=ε)`` here equals BlackJAX's
``sgld(step_size=ε/2)``.

A new kernel is an update-rule module (``init``, ``step``), its dataclass here, and its name in
``vigrad/sgmcmc/__init__.py``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from vigrad.sgmcmc import preconditioned_sgld, psgld, sghmc, sgld
from vigrad.sgmcmc.control_variates import ControlVariates
from vigrad.sgmcmc.federated import Conducive, GaussianApprox, Shards, hashable_devices
from vigrad.sgmcmc.kernel import Kernel, StepSize, Update, data_field
from vigrad.sgmcmc.laplace_metric import LaplaceMetric
from vigrad.sgmcmc.minibatch import Minibatch


@dataclasses.dataclass(frozen=True)
class SGLD(Kernel):
    """SGLD (Welling & Teh, ICML 2011): θ ← θ + (ε/2) ĝ + N(0, ε I), minibatch gradients."""

    step_size: StepSize

    update = property(lambda self: Update.of(sgld))
    gradient = property(lambda self: Minibatch())


@dataclasses.dataclass(frozen=True)
class pSGLD(Kernel):  # noqa: N801
    """Preconditioned SGLD with an RMSprop preconditioner (Li, Chen, Carlson & Carin, AAAI 2016):
    V ← αV + (1 − α) ĝ², G = 1/(eps + √V), θ ← θ + (ε/2) G ĝ + N(0, εG); the Γ correction term is
    dropped, as in the paper's experiments."""

    step_size: StepSize
    alpha: float = 0.99
    eps: float = 1e-5

    update = property(lambda self: Update.of(psgld, alpha=self.alpha, eps=self.eps))
    gradient = property(lambda self: Minibatch())


@dataclasses.dataclass(frozen=True)
class SGHMC(Kernel):
    """SGHMC (Chen, Fox & Guestrin, ICML 2014), unit mass: r ← r + ε ĝ − εC r + N(0, 2(C − B̂)ε),
    θ ← θ + ε r, with C = ``friction`` and B̂ = ``noise_estimate``; momentum kept between steps."""

    step_size: StepSize
    friction: float = 1.0
    noise_estimate: float = 0.0

    update = property(
        lambda self: Update.of(sghmc, friction=self.friction, noise_estimate=self.noise_estimate)
    )
    gradient = property(lambda self: Minibatch())


@dataclasses.dataclass(frozen=True)
class SGLDCV(Kernel):
    """SGLD with control variates (Baker, Fearnhead, Fox & Nemeth, Stat. Comput. 2019): the SGLD
    update with :class:`~vigrad.sgmcmc.control_variates.ControlVariates` gradients. The centre θ̂
    is found by Adam (``mode_steps``, ``mode_learning_rate``) or given as ``centre`` (constrained
    values); chains start at θ̂."""

    step_size: StepSize
    centre: dict | None = data_field()
    mode_steps: int = 2000
    mode_learning_rate: float = 1e-2

    update = property(lambda self: Update.of(sgld))
    gradient = property(
        lambda self: ControlVariates(self.centre, self.mode_steps, self.mode_learning_rate)
    )


@dataclasses.dataclass(frozen=True)
class PreconditionedSGLDCV(Kernel):
    """SGLD-CV with the constant metric M = H⁻¹ of the Laplace approximation at the centre:
    θ ← θ + (ε/2) M ĝ + N(0, εM) (:mod:`~vigrad.sgmcmc.preconditioned_sgld` with
    :class:`~vigrad.sgmcmc.laplace_metric.LaplaceMetric`). With M near the posterior covariance a
    strongly correlated posterior mixes as fast as an isotropic one; H's eigenvalues are floored
    at ``jitter`` times the largest."""

    step_size: StepSize
    centre: dict | None = data_field()
    mode_steps: int = 2000
    mode_learning_rate: float = 1e-2
    jitter: float = 1e-6

    update = property(lambda self: Update.of(preconditioned_sgld, data=("scale_tril",)))
    gradient = property(
        lambda self: LaplaceMetric(
            ControlVariates(self.centre, self.mode_steps, self.mode_learning_rate), self.jitter
        )
    )


@dataclasses.dataclass(frozen=True)
class DSGLD(Kernel):
    """Distributed SGLD (Ahn, Shahbaba & Welling, ICML 2014): rounds of ``local_steps`` SGLD steps
    on one shard picked with probability f_s (``probs``, default N_s/N); ``shards`` and
    ``devices`` as for :class:`~vigrad.sgmcmc.federated.Shards`."""

    step_size: StepSize
    shards: Any = data_field(1)
    local_steps: int = 1
    probs: Any = data_field()
    devices: Any = None

    def __post_init__(self):
        object.__setattr__(self, "devices", hashable_devices(self.devices))

    update = property(lambda self: Update.of(sgld))
    gradient = property(
        lambda self: Shards(self.shards, self.local_steps, self.probs, self.devices)
    )


@dataclasses.dataclass(frozen=True)
class FSGLD(Kernel):
    """Federated SGLD (El Mekkaoui, Mesquita, Blomstedt & Kaski, UAI 2021): DSGLD plus the
    conducive gradient of Gaussian shard approximations
    (:class:`~vigrad.sgmcmc.federated.Conducive`; Laplace fits by default)."""

    step_size: StepSize
    shards: Any = data_field(1)
    local_steps: int = 1
    probs: Any = data_field()
    devices: Any = None
    approximations: GaussianApprox | None = data_field()
    laplace_steps: int = 20

    def __post_init__(self):
        object.__setattr__(self, "devices", hashable_devices(self.devices))

    update = property(lambda self: Update.of(sgld))
    gradient = property(
        lambda self: Conducive(
            Shards(self.shards, self.local_steps, self.probs, self.devices),
            self.approximations,
            self.laplace_steps,
        )
    )
