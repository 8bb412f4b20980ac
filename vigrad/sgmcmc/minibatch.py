"""Minibatch log densities of a NumPyro model, taken from its data plate.

The model is run with the data plate's subsample indices substituted, so NumPyro's own plate
scaling multiplies the likelihood of a batch of ``n`` points by ``N / n``; observed data must be
indexed by the plate (``numpyro.subsample(x, event_dim=...)`` or ``with plate(...) as idx: x[idx]``).
Latent sites are moved to unconstrained space with ``biject_to(support)`` and the log-Jacobian is
added to the prior part, so every kernel works on an unconstrained pytree.

:class:`Target` and :class:`Problem` are pytrees whose leaves are the arrays (the transforms'
parameters, which may depend on the data, and the model's array arguments) and whose static part
is the model, the plate, the site shapes, the non-array arguments and the batch size: compiled
functions take them as ordinary arguments, and JAX's own cache, keyed on that static part, reuses
a compilation for any data of the same shapes.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpyro
from numpyro.distributions.transforms import biject_to
from numpyro.distributions.util import sum_rightmost
from numpyro.handlers import substitute

from vigrad.errors import DataError
from vigrad.infer.static import join_static
from vigrad.traces import Sites, trace_program

Position = dict[str, jax.Array]


def _plates_of(site: dict) -> list[str]:
    return [frame.name for frame in site.get("cond_indep_stack", [])]


@jax.tree_util.register_pytree_node_class
class Target:
    """The model's log density split into a prior part and a data-plate (likelihood) part.

    Built once from a concrete trace of the model: finds the data plate (the plate that holds every
    observed site), its size ``N``, and the latent sites with their unconstrained shapes. A pytree:
    the transforms to unconstrained space are its leaves, the rest is static.
    """

    def __init__(
        self,
        model: Callable,
        args: tuple,
        kwargs: dict,
        rng_key: jax.Array,
        data_plate: str | None = None,
    ):
        self.model = model
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            sites = trace_program(model, args, kwargs, rng_key=rng_key)
        plates = sites.plates
        observed = list(sites.observed.values())
        latent = list(sites.latent.values())
        if not observed:
            raise DataError("the model has no observed sites: SG-MCMC needs data in a plate")
        if data_plate is None:
            common = set(_plates_of(observed[0]))
            for site in observed[1:]:
                common &= set(_plates_of(site))
            if not common:
                raise DataError(
                    "the model has no data plate for minibatching: put the observed sites "
                    f"({', '.join(s['name'] for s in observed)}) inside numpyro.plate('data', N) "
                    "and index the data with numpyro.subsample(x, event_dim=...)"
                )
            if len(common) > 1:
                raise DataError(
                    f"the observed sites sit in several plates ({', '.join(sorted(common))}); "
                    "name the one to minibatch with data_plate='...'"
                )
            data_plate = common.pop()
        elif data_plate not in plates:
            raise DataError(
                f"data_plate='{data_plate}' is not a plate of the model "
                f"(plates: {', '.join(sorted(plates)) or 'none'})"
            )
        self.plate = data_plate
        self.num_data = int(plates[data_plate]["args"][0])
        for site in latent:
            if data_plate in _plates_of(site):
                raise DataError(
                    f"latent site '{site['name']}' sits inside the data plate '{data_plate}': "
                    "SG-MCMC subsamples that plate, so it can only sample global latents; "
                    "marginalise the local latent or move it out of the plate"
                )
        self.names = tuple(sorted(s["name"] for s in latent))
        sites = sites.latent
        self.transforms = {n: biject_to(sites[n]["fn"].support) for n in self.names}
        self.event_dims = {n: len(sites[n]["fn"].event_shape) for n in self.names}
        self.shapes = {n: jnp.shape(self.transforms[n].inv(sites[n]["value"])) for n in self.names}
        self.dtypes = {n: jnp.result_type(float) for n in self.names}
        self._check_subsampled(args, kwargs)

    _STATIC = ("model", "plate", "num_data", "names", "shapes", "event_dims", "dtypes")

    def tree_flatten(self) -> tuple:
        static = tuple(
            tuple(sorted(v.items())) if isinstance(v, dict) else v
            for v in (getattr(self, k) for k in self._STATIC)
        )
        return (self.transforms,), static

    @classmethod
    def tree_unflatten(cls, static: tuple, children: tuple) -> Target:
        target = object.__new__(cls)
        for k, v in zip(cls._STATIC, static, strict=True):
            setattr(target, k, dict(v) if k in ("shapes", "event_dims", "dtypes") else v)
        target.transforms = children[0]
        return target

    def _check_subsampled(self, args: tuple, kwargs: dict) -> None:
        """Raise DataError unless a minibatch of two points gives observed sites of two points.

        Traced abstractly (shapes only): run eagerly, each of the model's operations would compile
        on its own.
        """
        n = min(2, self.num_data)
        if n == self.num_data:
            return

        def check(u: Position) -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                try:
                    sites = self._trace(u, jnp.arange(n), args, kwargs)
                    for site in sites.observed.values():
                        site["fn"].log_prob(site["value"])
                except (ValueError, TypeError) as err:
                    raise DataError(self._not_indexed(f"({err})")) from None
            stack = (f for s in sites.trace.values() for f in s.get("cond_indep_stack", []))
            dim = {f.name: f.dim for f in stack}[self.plate]
            for site in sites.observed.values():
                if self.plate in _plates_of(site):
                    shape = jnp.shape(site["value"])
                    axis = dim - len(site["fn"].event_shape)
                    if len(shape) >= -axis and shape[axis] != n:
                        raise DataError(self._not_indexed(f"site '{site['name']}'"))

        jax.eval_shape(check, self.zeros())

    def _not_indexed(self, what: str) -> str:
        return (
            f"observed data in plate '{self.plate}' is not indexed by the plate {what}: SG-MCMC "
            "minibatches by substituting the plate's subsample indices, so index the data with "
            f"numpyro.subsample(x, event_dim=...) or `with numpyro.plate('{self.plate}', N) as "
            "idx: x[idx]`"
        )

    def plate_size(self, args: tuple, kwargs: dict) -> int:
        """Size of the data plate when the model is run on ``args`` and ``kwargs``."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            sites = self._trace(self.zeros(), None, args, kwargs)
        return int(sites.plates[self.plate]["args"][0])

    def zeros(self) -> Position:
        return {n: jnp.zeros(self.shapes[n], self.dtypes[n]) for n in self.names}

    def constrain(self, position: Position) -> Position:
        return {n: self.transforms[n](position[n]) for n in self.names}

    def unconstrain(self, values: dict[str, Any]) -> Position:
        return {n: self.transforms[n].inv(jnp.asarray(values[n])) for n in self.names}

    def _trace(self, position: Position, indices: jax.Array, args: tuple, kwargs: dict) -> Sites:
        transforms, event_dims = self.transforms, self.event_dims

        def unconstrain(site):
            name = site["name"]
            if site["type"] != "sample" or name not in position:
                return None
            u = position[name]
            t = transforms[name]
            value = t(u)
            log_det = t.log_abs_det_jacobian(u, value)
            log_det = sum_rightmost(log_det, jnp.ndim(log_det) - jnp.ndim(value) + event_dims[name])
            numpyro.factor(f"_{name}_log_det", log_det)
            return value

        model = substitute(self.model, data={self.plate: indices})
        model = substitute(model, substitute_fn=unconstrain)
        return trace_program(model, args, kwargs)

    def log_density(
        self, position: Position, indices: jax.Array, args: tuple, kwargs: dict
    ) -> tuple[jax.Array, jax.Array]:
        """``(log prior + log-Jacobian, (N/n) Σ_{i∈batch} log p(x_i|θ))`` at ``position``."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            sites = self._trace(position, indices, args, kwargs)
        prior, lik = 0.0, 0.0
        for site in sites.samples.values():
            lp = site["fn"].log_prob(site["value"])
            if site.get("scale") is not None:
                lp = site["scale"] * lp
            if self.plate in _plates_of(site):
                lik = lik + jnp.sum(lp)
            else:
                prior = prior + jnp.sum(lp)
        return jnp.asarray(prior), jnp.asarray(lik)

    def grad(
        self,
        position: Position,
        indices: jax.Array,
        args: tuple,
        kwargs: dict,
        lik_weight: jax.Array | float = 1.0,
        prior_weight: jax.Array | float = 1.0,
    ) -> Position:
        """Gradient of ``prior_weight * prior + lik_weight * (N/n) Σ_batch log p(x_i|θ)``."""

        def f(u):
            prior, lik = self.log_density(u, indices, args, kwargs)
            return prior_weight * prior + lik_weight * lik

        return jax.grad(f)(position)


def minibatch_indices(rng_key: jax.Array, num_data: int, batch_size: int) -> jax.Array:
    """``batch_size`` indices drawn uniformly with replacement from ``0..num_data-1``.

    With replacement keeps a step O(n) for any N (a permutation of N would be O(N) per step) and
    ``(N/n) Σ_{i∈B}`` is still an unbiased estimate of the full sum.
    """
    return jax.random.randint(rng_key, (batch_size,), 0, num_data)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Problem:
    """A :class:`Target` bound to the model's arguments and a batch size: what a gradient
    estimator evaluates. A pytree: ``target`` and the array arguments ``dynamic`` are its data,
    the non-array arguments (``static_key``, from :func:`vigrad.infer.static.split_static`) and
    ``batch_size`` its static part."""

    target: Target
    dynamic: list
    static_key: tuple = dataclasses.field(metadata={"static": True})
    batch_size: int = dataclasses.field(metadata={"static": True})

    @property
    def num_data(self) -> int:
        return self.target.num_data

    def arguments(self) -> tuple[tuple, dict]:
        return join_static(self.dynamic, self.static_key)

    def log_density(self, position: Position, indices: jax.Array) -> tuple[jax.Array, jax.Array]:
        args, kwargs = self.arguments()
        return self.target.log_density(position, indices, args, kwargs)

    def grad(
        self,
        position: Position,
        indices: jax.Array,
        lik_weight: jax.Array | float = 1.0,
        prior_weight: jax.Array | float = 1.0,
    ) -> Position:
        args, kwargs = self.arguments()
        return self.target.grad(position, indices, args, kwargs, lik_weight, prior_weight)

    def minibatch(self, rng_key: jax.Array) -> jax.Array:
        return minibatch_indices(rng_key, self.num_data, self.batch_size)


@dataclasses.dataclass(frozen=True)
class Minibatch:
    """The plain minibatch estimator (Robbins & Monro 1951; Welling & Teh 2011):

        ĝ(θ) = ∇ log p(θ) + (N/n) Σ_{i∈B} ∇ log p(x_i|θ),   B uniform with replacement,

    unbiased for ∇ log p(θ | x) because each of the n draws has mean (1/N) Σ_i ∇ log p(x_i|θ).
    """

    def prepare(self, problem: Problem, rng_key: jax.Array, position: Position) -> tuple:
        return ()

    def start(self, aux: Any) -> Position | None:
        return None

    def estimate(self, problem, aux, position, rng_key, t, chain_key) -> Position:
        return problem.grad(position, problem.minibatch(rng_key))
