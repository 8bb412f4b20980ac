"""Tracing a model and its guide, and the sites of a trace by kind.

Everything in vigrad that needs to know what a program contains (its parameters and their
constraints, its latent and observed sites, its plates) traces it here: the guide seeded and run
with the given parameters, the model replayed on the guide's trace, as NumPyro's ELBOs do. The
result is a :class:`Sites` per program, whose properties pick the sites of one kind. With
``abstract=True`` the programs run under :func:`jax.eval_shape`, so nothing is computed: the sites'
names, distributions and constraints are then exact and their values are abstract.

(Drawing particles is not done here: :mod:`vigrad.objectives.particles` traces the guide under the
estimators' own handler, and classifies its traces with :class:`Sites`.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
from numpyro.distributions import Delta
from numpyro.handlers import replay, seed, substitute, trace
from numpyro.infer.autoguide import AutoGuideList


@dataclasses.dataclass(frozen=True)
class Sites:
    """The sites of one NumPyro trace (``trace``: site name -> site record), by kind."""

    trace: Mapping[str, dict]

    def _where(self, keep: Callable[[dict], bool]) -> dict[str, dict]:
        return {name: site for name, site in self.trace.items() if keep(site)}

    @property
    def samples(self) -> dict[str, dict]:
        """Every sample site, latent and observed."""
        return self._where(lambda s: s["type"] == "sample")

    @property
    def latent(self) -> dict[str, dict]:
        """Sample sites that are not observed."""
        return self._where(lambda s: s["type"] == "sample" and not s["is_observed"])

    @property
    def sampled(self) -> dict[str, dict]:
        """Latent sites that are drawn, not point masses computed from other sites (``Delta``,
        as autoguides such as ``AutoDiagonalNormal`` emit for the model's sites)."""
        return {n: s for n, s in self.latent.items() if not isinstance(s["fn"], Delta)}

    @property
    def observed(self) -> dict[str, dict]:
        """Observed sample sites."""
        return self._where(lambda s: s["type"] == "sample" and s["is_observed"])

    @property
    def params(self) -> dict[str, dict]:
        """``numpyro.param`` sites."""
        return self._where(lambda s: s["type"] == "param")

    @property
    def plates(self) -> dict[str, dict]:
        """``numpyro.plate`` sites."""
        return self._where(lambda s: s["type"] == "plate")

    @property
    def deterministic(self) -> dict[str, dict]:
        """``numpyro.deterministic`` sites."""
        return self._where(lambda s: s["type"] == "deterministic")

    @property
    def mutable(self) -> dict[str, dict]:
        """``numpyro.mutable`` sites."""
        return self._where(lambda s: s["type"] == "mutable")


def values(sites: Mapping[str, dict]) -> dict[str, Any]:
    """Site name -> value."""
    return {name: site["value"] for name, site in sites.items()}


class ModelGuide(NamedTuple):
    """The guide's sites and the model's sites, the model replayed on the guide."""

    guide: Sites
    model: Sites


def ensure_prototype(guide: Callable, args: tuple, kwargs: dict, rng_key: Any = 0) -> None:
    """Build an autoguide's prototype (eagerly, seeded with ``rng_key``) if it has not built it
    yet: it needs concrete values for that, so it cannot be traced abstractly before.

    Only the prototype is built (NumPyro's ``_setup_prototype``, which the guide's first call
    runs, drawing its initial values with the seed's first key, as here): the rest of a first
    call, run eagerly, would compile each of its operations on its own. An ``AutoGuideList``
    checks its parts on its first call, so it makes the whole call.
    """
    if getattr(guide, "prototype_trace", False) is None:
        whole_call = isinstance(guide, AutoGuideList)
        setup = guide if whole_call else getattr(guide, "_setup_prototype", guide)
        seed(setup, rng_key)(*args, **kwargs)


def _program(fn: Callable, params: Mapping | None, rng_key: Any, data: Mapping | None) -> Callable:
    fn = seed(substitute(fn, data=dict(params)) if params else fn, rng_key)
    return substitute(fn, data=dict(data)) if data else fn


def _run(traced: Callable[[dict], Any], params: Mapping | None, abstract: bool) -> Any:
    if not abstract:
        return traced(dict(params or {}))
    out = []
    # The parameters enter as arguments, so nothing is computed on them.
    jax.eval_shape(lambda p: out.append(traced(p)), dict(params or {}))
    return out[0]


def trace_program(
    fn: Callable,
    args: tuple = (),
    kwargs: Mapping | None = None,
    *,
    params: Mapping | None = None,
    rng_key: Any = 0,
    data: Mapping | None = None,
    abstract: bool = False,
) -> Sites:
    """The sites of one run of ``fn(*args, **kwargs)``.

    Args:
        params: values substituted for ``numpyro.param`` sites (and any other named site).
        rng_key: the seed of the run.
        data: values substituted for latent sites, after seeding (the run draws no others).
        abstract: trace under :func:`jax.eval_shape` (values abstract; an autoguide runs once
            eagerly first to build its prototype).
    """
    kwargs = dict(kwargs or {})
    if abstract:
        ensure_prototype(fn, args, kwargs)

    def traced(p: dict) -> Sites:
        return Sites(trace(_program(fn, p, rng_key, data)).get_trace(*args, **kwargs))

    return _run(traced, params, abstract)


def trace_model_and_guide(
    model: Callable,
    guide: Callable,
    args: tuple = (),
    kwargs: Mapping | None = None,
    *,
    params: Mapping | None = None,
    guide_key: Any = 0,
    model_key: Any = None,
    abstract: bool = False,
) -> ModelGuide:
    """The guide's and the model's sites: the guide run with ``params``, the model replayed on
    the guide's trace (its latent sites take the guide's values, as in NumPyro's ELBOs).

    Args:
        params: values substituted for ``numpyro.param`` sites of both programs.
        guide_key, model_key: seeds of the guide and of the model's own draws (``model_key``
            defaults to ``guide_key``; give a separate key where the model's draws must be
            independent of the guide's).
        abstract: trace under :func:`jax.eval_shape` (see :func:`trace_program`).
    """
    kwargs = dict(kwargs or {})
    model_key = guide_key if model_key is None else model_key
    if abstract:
        ensure_prototype(guide, args, kwargs)

    def traced(p: dict) -> ModelGuide:
        guide_tr = trace(_program(guide, p, guide_key, None)).get_trace(*args, **kwargs)
        model_fn = seed(replay(substitute(model, data=p) if p else model, guide_tr), model_key)
        return ModelGuide(Sites(guide_tr), Sites(trace(model_fn).get_trace(*args, **kwargs)))

    return _run(traced, params, abstract)
