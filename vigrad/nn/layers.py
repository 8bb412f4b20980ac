"""Bayesian dense and convolutional layers whose weights are NumPyro latent sites.

A layer is a small immutable description. Called in the model, it samples its weight and bias from
the prior and applies itself to the input through :mod:`vigrad.nn.functional` (so the guide's
estimator decides the gradient); :meth:`guide` declares the matching mean-field Gaussian guide
sites, each marked with the layer's estimator:

* ``"rt"``: plain reparameterisation (:class:`~vigrad.Reparam`);
* ``"lrt"``: the local reparameterisation trick (:class:`~vigrad.LocalReparam`, dense only);
* ``"r2g2"``: R2-G2 (:class:`~vigrad.R2G2`);

or any other name of :data:`vigrad.registry.ESTIMATORS`, or an estimator instance.

Example::

    layers = [Dense("fc1", 64, 32, estimator="r2g2"), Dense("fc2", 32, 10, estimator="lrt")]

    def model(x, y=None):
        h = jax.nn.relu(layers[0](x))
        logits = layers[1](h)
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("y", dist.Categorical(logits=logits), obs=y)

    def guide(x, y=None):
        for layer in layers:
            layer.guide()
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from vigrad.errors import EstimatorError
from vigrad.estimators.base import Estimator
from vigrad.estimators.r2g2 import LocalReparam
from vigrad.estimators.reparam import Reparam
from vigrad.nn.functional import conv2d, linear
from vigrad.registry import ESTIMATORS


def estimator_for(choice: str | Estimator, layer: str, dense: bool = True) -> Estimator:
    """The estimator named by ``choice`` in :data:`vigrad.registry.ESTIMATORS` ("rt", "lrt",
    "r2g2", ...), or ``choice`` itself."""
    if isinstance(choice, Estimator):
        est = choice
    elif isinstance(choice, str) and choice in ESTIMATORS:
        est = ESTIMATORS.build(choice)
    else:
        raise EstimatorError(
            f"Layer '{layer}': unknown estimator {choice!r}; choose one of "
            f"{sorted({*ESTIMATORS, *ESTIMATORS.aliases})} or pass a vigrad estimator."
        )
    if not dense and isinstance(est, LocalReparam):
        raise EstimatorError(
            f"Layer '{layer}': the local reparameterisation trick applies to dense layers only. "
            "Use estimator='r2g2' (or 'rt') for a convolution."
        )
    return est


def _gaussian_guide_site(
    name: str, shape: tuple[int, ...], init_loc_sd: float, init_scale: float, estimator: Estimator
) -> jax.Array:
    loc = numpyro.param(f"{name}_loc", lambda key: init_loc_sd * jax.random.normal(key, shape))
    rho = numpyro.param(f"{name}_rho", jnp.full(shape, math.log(math.expm1(init_scale))))
    scale = jax.nn.softplus(rho)
    return numpyro.sample(
        name, dist.Normal(loc, scale).to_event(len(shape)), infer={"estimator": estimator}
    )


@dataclasses.dataclass(frozen=True)
class Dense:
    """A Bayesian dense layer ``x @ W + b`` with ``W ~ N(0, prior_scale^2)`` elementwise.

    Sites: ``{name}_w`` (``[in_features, out_features]``) and, with ``bias``, ``{name}_b``; guide
    parameters ``{site}_loc`` and ``{site}_rho`` (scale ``softplus(rho)``). The bias always uses
    plain reparameterisation.
    """

    name: str
    in_features: int
    out_features: int
    estimator: str | Estimator = "r2g2"
    prior_scale: float = 1.0
    bias: bool = True
    init_scale: float = 1e-2

    def __post_init__(self):
        estimator_for(self.estimator, self.name, dense=True)

    @property
    def weight_site(self) -> str:
        return f"{self.name}_w"

    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (self.in_features, self.out_features)
        w = numpyro.sample(
            self.weight_site, dist.Normal(0.0, self.prior_scale).expand(shape).to_event(2)
        )
        out = linear(self.weight_site, x, w)
        if self.bias:
            b = numpyro.sample(
                f"{self.name}_b",
                dist.Normal(0.0, self.prior_scale).expand((self.out_features,)).to_event(1),
            )
            out = out + b
        return out

    def guide(self) -> None:
        """Declare the layer's mean-field Gaussian guide sites."""
        est = estimator_for(self.estimator, self.name, dense=True)
        shape = (self.in_features, self.out_features)
        _gaussian_guide_site(
            self.weight_site, shape, 1.0 / math.sqrt(self.in_features), self.init_scale, est
        )
        if self.bias:
            _gaussian_guide_site(
                f"{self.name}_b", (self.out_features,), 0.0, self.init_scale, Reparam()
            )


@dataclasses.dataclass(frozen=True)
class Conv2d:
    """A Bayesian 2-D convolution (NHWC inputs, HWIO kernel) with Gaussian prior on the kernel.

    Sites: ``{name}_w`` (``[k, k, in_channels, out_channels]``) and, with ``bias``, ``{name}_b``.
    Estimators: "rt" or "r2g2" (the local reparameterisation trick does not apply to convolutions).
    """

    name: str
    in_channels: int
    out_channels: int
    kernel_size: int = 3
    stride: int = 1
    padding: str = "SAME"
    estimator: str | Estimator = "r2g2"
    prior_scale: float = 1.0
    bias: bool = True
    init_scale: float = 1e-2

    def __post_init__(self):
        estimator_for(self.estimator, self.name, dense=False)

    @property
    def weight_site(self) -> str:
        return f"{self.name}_w"

    @property
    def kernel_shape(self) -> tuple[int, int, int, int]:
        k = self.kernel_size
        return (k, k, self.in_channels, self.out_channels)

    def __call__(self, x: jax.Array) -> jax.Array:
        w = numpyro.sample(
            self.weight_site,
            dist.Normal(0.0, self.prior_scale).expand(self.kernel_shape).to_event(4),
        )
        out = conv2d(self.weight_site, x, w, self.stride, self.padding)
        if self.bias:
            b = numpyro.sample(
                f"{self.name}_b",
                dist.Normal(0.0, self.prior_scale).expand((self.out_channels,)).to_event(1),
            )
            out = out + b
        return out

    def guide(self) -> None:
        """Declare the layer's mean-field Gaussian guide sites."""
        est = estimator_for(self.estimator, self.name, dense=False)
        fan_in = self.kernel_size**2 * self.in_channels
        _gaussian_guide_site(
            self.weight_site, self.kernel_shape, 1.0 / math.sqrt(fan_in), self.init_scale, est
        )
        if self.bias:
            _gaussian_guide_site(
                f"{self.name}_b", (self.out_channels,), 0.0, self.init_scale, Reparam()
            )
