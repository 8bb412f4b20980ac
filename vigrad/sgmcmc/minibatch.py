"""Minibatch log densities of a NumPyro model, taken from its data plate.

The model is run with the data plate's subsample indices substituted, so NumPyro's own plate
scaling multiplies the likelihood of a batch of ``n`` points by ``N / n``; observed data must be
indexed by the plate (``numpyro.subsample(x, event_dim=...)`` or ``with plate(...) as idx: x[idx]``).
Latent sites are moved to unconstrained space with ``biject_to(support)`` and the log-Jacobian is
added to the prior part, so every kernel works on an unconstrained pytree.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpyro
from numpyro.distributions.transforms import biject_to
from numpyro.distributions.util import sum_rightmost
from numpyro.handlers import seed, substitute, trace

from vigrad.errors import DataError

Position = dict[str, jax.Array]


def _plates_of(site: dict) -> list[str]:
    return [frame.name for frame in site.get("cond_indep_stack", [])]


class Target:
    """The model's log density split into a prior part and a data-plate (likelihood) part.

    Built once from a concrete trace of the model: finds the data plate (the plate that holds every
    observed site), its size ``N``, and the latent sites with their unconstrained shapes.
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
            tr = trace(seed(model, rng_key)).get_trace(*args, **kwargs)
        plates = {s["name"]: s for s in tr.values() if s["type"] == "plate"}
        observed = [s for s in tr.values() if s["type"] == "sample" and s["is_observed"]]
        latent = [s for s in tr.values() if s["type"] == "sample" and not s["is_observed"]]
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
        sites = {s["name"]: s for s in latent}
        self.transforms = {n: biject_to(sites[n]["fn"].support) for n in self.names}
        self.event_dims = {n: len(sites[n]["fn"].event_shape) for n in self.names}
        self.shapes = {n: jnp.shape(self.transforms[n].inv(sites[n]["value"])) for n in self.names}
        self.dtypes = {n: jnp.result_type(float) for n in self.names}
        self._check_subsampled(args, kwargs)

    def _check_subsampled(self, args: tuple, kwargs: dict) -> None:
        n = min(2, self.num_data)
        if n == self.num_data:
            return
        idx = jnp.arange(n)
        u = self.zeros()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            try:
                tr = self._trace(u, idx, args, kwargs)
                for site in tr.values():
                    if site["type"] == "sample" and site["is_observed"]:
                        site["fn"].log_prob(site["value"])
            except (ValueError, TypeError) as err:
                raise DataError(self._not_indexed(f"({err})")) from None
        frame = {f.name: f for s in tr.values() for f in s.get("cond_indep_stack", [])}
        dim = frame[self.plate].dim
        for site in tr.values():
            if site["type"] == "sample" and site["is_observed"] and self.plate in _plates_of(site):
                shape = jnp.shape(site["value"])
                event = len(site["fn"].event_shape)
                axis = dim - event
                if len(shape) >= -axis and shape[axis] != n:
                    raise DataError(self._not_indexed(f"site '{site['name']}'"))

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
            tr = self._trace(self.zeros(), None, args, kwargs)
        return int(tr[self.plate]["args"][0])

    def zeros(self) -> Position:
        return {n: jnp.zeros(self.shapes[n], self.dtypes[n]) for n in self.names}

    def constrain(self, position: Position) -> Position:
        return {n: self.transforms[n](position[n]) for n in self.names}

    def unconstrain(self, values: dict[str, Any]) -> Position:
        return {n: self.transforms[n].inv(jnp.asarray(values[n])) for n in self.names}

    def _trace(self, position: Position, indices: jax.Array, args: tuple, kwargs: dict):
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
        return trace(seed(model, 0)).get_trace(*args, **kwargs)

    def log_density(
        self, position: Position, indices: jax.Array, args: tuple, kwargs: dict
    ) -> tuple[jax.Array, jax.Array]:
        """``(log prior + log-Jacobian, (N/n) Σ_{i∈batch} log p(x_i|θ))`` at ``position``."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            tr = self._trace(position, indices, args, kwargs)
        prior, lik = 0.0, 0.0
        for site in tr.values():
            if site["type"] != "sample":
                continue
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
