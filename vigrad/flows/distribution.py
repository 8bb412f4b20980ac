"""Flow guides: flowjax flows as NumPyro guide sites and as an autoguide.

A flowjax flow is an equinox module (a pytree of arrays and static structure). :class:`FlowDistribution`
wraps one as a NumPyro distribution whose pytree leaves are the flow's arrays, so
``jax.tree.map(stop_gradient, fn)`` (what :class:`vigrad.PathGradient` does) stops its parameters.
:func:`flow_sample` registers the flow's parameters as one flat ``numpyro.param`` and samples a
site from it; :class:`AutoFlow` is an autoguide over the model's unconstrained latent space.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpyro
from flowjax.bijections import Loc, RationalQuadraticSpline
from flowjax.distributions import AbstractDistribution, StandardNormal, Transformed
from flowjax.flows import coupling_flow
from jax.flatten_util import ravel_pytree
from numpyro.distributions import Distribution, constraints
from numpyro.infer.autoguide import AutoContinuous
from numpyro.infer.initialization import init_to_uniform

from vigrad.flows.score import _typed_key, path_log_q


class FlowDistribution(Distribution):
    """A flowjax flow (an unconditional ``AbstractDistribution`` with a 1-D shape) as a NumPyro
    distribution with a reparameterised sampler.

    ``path_draw`` gives the sample together with a ``log q`` term whose parameter gradient is the
    path gradient, computed by the forward score recursion (:mod:`vigrad.flows.score`).
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True
    reparametrized_params: list = []
    pytree_data_fields = ("_arrays",)
    pytree_aux_fields = ("_static",)

    def __init__(self, flow: AbstractDistribution, *, validate_args: bool | None = None):
        if not isinstance(flow, AbstractDistribution):
            raise TypeError(f"FlowDistribution expects a flowjax distribution, got {type(flow)}")
        if flow.cond_shape is not None or len(flow.shape) != 1:
            raise ValueError(
                "FlowDistribution expects an unconditional flowjax flow over vectors "
                f"(shape (d,)), got shape {flow.shape} and cond_shape {flow.cond_shape}"
            )
        self._arrays, self._static = eqx.partition(flow, eqx.is_array)
        super().__init__(batch_shape=(), event_shape=flow.shape, validate_args=validate_args)

    @property
    def flow(self) -> AbstractDistribution:
        return eqx.combine(self._arrays, self._static)

    def rsample(self, key: jax.Array, sample_shape: tuple[int, ...] = ()) -> jax.Array:
        return self.flow.sample(_typed_key(key), tuple(sample_shape))

    def sample(self, key: jax.Array, sample_shape: tuple[int, ...] = ()) -> jax.Array:
        return self.rsample(key, sample_shape)

    def log_prob(self, value: jax.Array) -> jax.Array:
        return self.flow.log_prob(value)

    def path_draw(
        self, key: jax.Array, sample_shape: tuple[int, ...] = ()
    ) -> tuple[jax.Array, jax.Array]:
        """``(x, log_q)``: the same sample as :meth:`rsample` and the path-gradient ``log q``
        term (value ``log q(x)``, gradient ``grad_x log q(x) . dx/dparams``)."""
        return path_log_q(self.flow, key, tuple(sample_shape))


def flow_param(name: str, flow: AbstractDistribution) -> AbstractDistribution:
    """The flow with its trainable arrays read from one flat ``numpyro.param`` site ``name``
    (initialised from ``flow``)."""
    params, static = eqx.partition(flow, eqx.is_inexact_array)
    flat, unravel = ravel_pytree(params)
    flat = numpyro.param(name, flat)
    return eqx.combine(unravel(flat), static)


def flow_sample(
    name: str,
    flow: AbstractDistribution,
    *,
    estimator: Any = None,
    param_name: str | None = None,
) -> jax.Array:
    """Sample guide site ``name`` from a flowjax flow whose parameters are NumPyro params.

    Args:
        name: the sample site (a latent of the model, over the reals).
        flow: the initial flowjax flow; its trainable arrays become the flat param
            ``param_name`` (default ``f"{name}_flow"``).
        estimator: a vigrad estimator for the site (e.g. :class:`vigrad.flows.FlowPathGradient`),
            or ``None`` to leave the choice to the objective.

    Example::

        flow = coupling_flow(jax.random.key(0), base_dist=StandardNormal((2,)), invert=False)

        def guide():
            flow_sample("z", flow, estimator=FlowPathGradient())
    """
    trained = flow_param(param_name or f"{name}_flow", flow)
    infer = {} if estimator is None else {"estimator": estimator}
    return numpyro.sample(name, FlowDistribution(trained), infer=infer)


def default_flow(key: jax.Array, dim: int) -> AbstractDistribution:
    """Rational-quadratic-spline coupling flow in the sampling direction (fast forward pass)."""
    return coupling_flow(
        key,
        base_dist=StandardNormal((dim,)),
        transformer=RationalQuadraticSpline(knots=8, interval=4.0),
        flow_layers=4,
        nn_width=32,
        invert=False,
    )


class AutoFlow(AutoContinuous):
    """A normalizing-flow autoguide over the model's unconstrained latent space.

    The flow (built by ``flow(key, dim)``, a flowjax flow over ``dim`` reals) is followed by a shift
    to the initial location given by ``init_loc_fn``. Its parameters are one flat param
    ``f"{prefix}_flow"``.

    Args:
        model: the NumPyro model.
        flow: ``(key, dim) -> flowjax flow``; default :func:`default_flow`.
        estimator: the estimator of the latent site (e.g. ``FlowPathGradient()``), or ``None``
            to leave it to the objective.
        rng_seed: seed of the flow's initial parameters.
    """

    def __init__(
        self,
        model: Callable,
        flow: Callable[[jax.Array, int], AbstractDistribution] | None = None,
        *,
        estimator: Any = None,
        prefix: str = "auto",
        init_loc_fn: Callable = init_to_uniform,
        rng_seed: int = 0,
    ):
        self._flow_builder = flow or default_flow
        self._estimator = estimator
        self._rng_seed = rng_seed
        self._flow = None
        super().__init__(model, prefix=prefix, init_loc_fn=init_loc_fn)

    def _setup_prototype(self, *args, **kwargs):
        super()._setup_prototype(*args, **kwargs)
        flow = self._flow_builder(jr.key(self._rng_seed), self.latent_dim)
        self._flow = Transformed(flow, Loc(jnp.asarray(self._init_latent)))

    def _get_posterior(self) -> FlowDistribution:
        return FlowDistribution(flow_param(f"{self.prefix}_flow", self._flow))

    def _sample_latent(self, *args, **kwargs):
        sample_shape = kwargs.pop("sample_shape", ())
        infer = {"is_auxiliary": True}
        if self._estimator is not None:
            infer["estimator"] = self._estimator
        posterior = self._get_posterior()
        if sample_shape:
            posterior = posterior.expand_by(sample_shape)
        return numpyro.sample(f"_{self.prefix}_latent", posterior, infer=infer)

    def get_base_dist(self):
        raise NotImplementedError("AutoFlow draws through its flow; use sample_posterior")

    def get_transform(self, params):
        raise NotImplementedError("AutoFlow's transform is not affine; use sample_posterior")

    def get_posterior(self, params: dict) -> FlowDistribution:
        """The flow over the unconstrained latent vector at ``params``."""
        flow = numpyro.handlers.substitute(self._get_posterior, data=params)
        return flow()
