"""The building blocks of objective programs.

An objective is an ordinary Python function of a :class:`ProgramContext` ``p`` that returns the
scalar to maximise. The context gives it three primitives, each vectorised and traced once per
compilation:

* ``p.particles(K)``: ``K`` independent particles of the guide scored under the model
  (:class:`Particles`, with ``log_w = log p(x, z) - log q(z)``), every guide site drawn with its
  own estimator; ``p.particles(K, body)`` runs any ``body(p)`` ``K`` times independently
  (``jax.vmap``) and stacks what it returns, for nested Monte Carlo estimates.
* ``p.sample(program, *args)``: a joint draw of any NumPyro program (the guide, a reverse model, a
  proposal) with per-site estimators, and its log density (:class:`Draw`).
* ``p.score(program, values, *args)``: the log density of given values under a program (the model).

While the program runs, the context records every random choice whose gradient needs more than
the chain rule (score-function sites, enumerated sites, sticking-the-landing sites) and where it
lies. :mod:`vigrad.objectives.transform` then checks that each estimator is unbiased in that place
and gives each score-function site its learning signal. Keys are derived from the program's key by
the position of each call, so re-running a program replays the same draws.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions import Delta
from numpyro.handlers import seed, substitute, trace

from vigrad.errors import DataError, EstimatorError, ModelGuideMismatchError
from vigrad.estimators.assignment import Assignment
from vigrad.estimators.base import Estimator
from vigrad.estimators.log_prob import log_prob
from vigrad.estimators.path import PathGradient
from vigrad.estimators.score import Score
from vigrad.objectives.multi_sample import multi_sample_particle
from vigrad.objectives.particle_axis import constrain_particles
from vigrad.objectives.particles import (
    ParticleDraw,
    ParticleSites,
    _estimator_log_q,
    _SampleWithEstimators,
    _scaled,
    standard_particle,
)

stop = jax.lax.stop_gradient


class Draw(NamedTuple):
    """A joint draw of a program (or values scored under one).

    Attributes:
        values: the program's latent values by site name.
        log_prob: the program's log density at them (latent sites along their estimators' paths,
            observed sites and factors included; plate subsampling scales applied).
    """

    values: dict[str, jax.Array]
    log_prob: jax.Array


class _FixedSamples(Assignment):
    """Every site drawn with its gradient stopped and its full ``log q``, whatever the guide asks."""

    def resolve(self, site: dict) -> Estimator:
        return Score()


@dataclasses.dataclass
class _Block:
    """A top-level particle block, as the transformation needs to know it."""

    id: str
    num: int
    standard: bool
    fixed: bool
    keys: jax.Array
    output: Any = None
    values_used: bool = False
    sites: ParticleSites | None = None
    kl: bool = False


class Particles:
    """``K`` particles of the guide scored under the model.

    Attributes:
        log_w: ``[K]`` log weights ``log p(x, z_k) - log q(z_k)``.
        log_p: ``[K]`` the model's log densities.
        log_q: ``[K]`` the guide's log densities, each site along its estimator's path.
        values: the guide's latent values by site name, each ``[K, ...]``.
        sites: static facts about the traces (estimators, latent sites of guide and model).
    """

    def __init__(self, draw: ParticleDraw, sites: ParticleSites, block: _Block | None):
        self._draw = draw
        self.sites = sites
        self._block = block

    @property
    def log_p(self) -> jax.Array:
        return self._draw.log_p

    @property
    def log_q(self) -> jax.Array:
        return self._draw.log_q

    @property
    def log_w(self) -> jax.Array:
        return self._draw.log_p - self._draw.log_q

    @property
    def values(self) -> dict[str, jax.Array]:
        # A program that uses the values themselves is not a function of the log densities alone,
        # so its score-function sites cannot be given Rao-Blackwellised signals.
        if self._block is not None:
            self._block.values_used = True
        return self._draw.values

    @property
    def site_log_w(self) -> dict[str, jax.Array]:
        """Site name -> ``[K]`` its share of the log weight (``log p`` minus ``log q`` of the
        site); the shares sum to ``log_w`` unless sites are enumerated."""
        return self._draw.site_log_w

    @property
    def num_particles(self) -> int:
        return int(self._draw.log_p.shape[0])


@dataclasses.dataclass(frozen=True)
class ScoreNode:
    """A score-function site drawn by a program, and where.

    Attributes:
        site: the site's name.
        estimator: its estimator.
        block: the top-level particle block it lies in (``None`` outside any block).
        num: the size of that block.
        rao_blackwellised: the node carries its downstream costs (it was drawn directly in a
            top-level ``p.particles(K)`` block).
        measure_valued: the node's gradient term is a measure-valued derivative (its arrays are
            ``q(b)`` and the costs at each support value ``b``) instead of a score term.
    """

    site: str
    estimator: Estimator
    block: str | None
    num: int
    rao_blackwellised: bool
    measure_valued: bool = False


@dataclasses.dataclass
class Records:
    """What one level of a program recorded while running (static facts and traced arrays)."""

    nodes: dict[str, ScoreNode] = dataclasses.field(default_factory=dict)
    arrays: dict[str, dict[str, jax.Array]] = dataclasses.field(default_factory=dict)
    path_draws: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    probe_shapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    blocks: dict[str, _Block] = dataclasses.field(default_factory=dict)
    enumerated: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    analytic_kl: set[str] = dataclasses.field(default_factory=set)
    estimators: dict[str, Estimator] = dataclasses.field(default_factory=dict)

    def merge(self, sub: Records, block_id: str, num: int, arrays: dict, top_level: bool) -> None:
        """Take in what a block's body recorded, its arrays stacked along the block's axis."""
        prefix = lambda name: f"{block_id}/{name}"
        for nid, node in sub.nodes.items():
            self.nodes[prefix(nid)] = dataclasses.replace(
                node,
                block=block_id,
                num=num,
                rao_blackwellised=node.rao_blackwellised and node.block is None and top_level,
            )
        self.arrays.update({prefix(nid): a for nid, a in arrays.items()})
        self.path_draws.update({prefix(pid): s for pid, s in sub.path_draws.items()})
        self.probe_shapes.update({prefix(p): (num, *s) for p, s in sub.probe_shapes.items()})
        self.estimators.update({prefix(n): e for n, e in sub.estimators.items()})
        for where, sites in sub.enumerated.items():
            if not top_level or where:
                raise EstimatorError(
                    f"Enumerate() on {list(sites)}: sites can be summed out only in a top-level "
                    "p.particles(K) block of an objective linear in its log weights (the ELBO). "
                    "Use vigrad.Score() or vigrad.MVD() for these sites."
                )
            self.enumerated[block_id] = sites


@dataclasses.dataclass(frozen=True)
class _Run:
    """What every context of one program run shares."""

    model: Callable
    guide: Callable
    args: tuple
    kwargs: dict
    params: dict
    assignment: Assignment
    # Leave-one-out replays: top-level block id -> function replacing that block's output.
    overrides: dict[str, Callable[[Any], Any]] | None = None
    # The guide returns several samples per site along a leading axis (see multi_sample.py).
    multi_sample_guide: bool = False


class ProgramContext:
    """What an objective program draws from and scores under (see the module docstring).

    Attributes:
        model, guide: the NumPyro programs the objective was called with.
        args, kwargs: their arguments (the data).
        params: the parameter values of this evaluation.
    """

    def __init__(
        self,
        run: _Run,
        rng_key: jax.Array,
        probes: dict[str, jax.Array] | None = None,
        path: tuple[str, ...] = (),
        record_nodes: bool = True,
    ):
        self._run = run
        self._key = rng_key
        self._probes = probes or {}
        self._path = path
        self._record_nodes = record_nodes
        self._count = 0
        self._records = Records()
        self._standard_sites: ParticleSites | None = None

    model = property(lambda self: self._run.model)
    guide = property(lambda self: self._run.guide)
    args = property(lambda self: self._run.args)
    kwargs = property(lambda self: self._run.kwargs)
    params = property(lambda self: self._run.params)

    def _next(self, kind: str) -> tuple[str, jax.Array]:
        """A fresh id and key; both depend only on the call's position in the program."""
        self._count += 1
        return f"{kind}{self._count}", jax.random.fold_in(self._key, self._count)

    def key(self) -> jax.Array:
        """A fresh PRNG key for the program's own randomness (independent of every draw)."""
        return self._next("key")[1]

    def _probe(self, pid: str) -> jax.Array:
        """Zero, or the analysis input that measures how the objective depends on a log density."""
        self._records.probe_shapes[pid] = ()
        return self._probes.get(pid, jnp.zeros(()))

    def _program_args(self, program: Callable | None, args: tuple, kwargs: dict):
        if program is None:
            program = self._run.guide
        if not args and not kwargs and program in (self._run.guide, self._run.model):
            args, kwargs = self._run.args, self._run.kwargs
        return program, args, kwargs

    # --- particle blocks ---------------------------------------------------------------------

    def particles(
        self,
        num: int,
        body: Callable[[ProgramContext], Any] | None = None,
        *,
        fixed: bool = False,
        analytic_kl: bool = False,
    ) -> Any:
        """``num`` independent particles.

        Without ``body``: the guide drawn with its per-site estimators and scored under the model,
        as :class:`Particles`. With ``body``: ``body(p)`` run ``num`` times with independent
        randomness, its outputs stacked along a leading axis. ``fixed=True`` draws every guide
        site with its gradient stopped and no score-function term (the samples are treated as
        fixed, as the wake phases of reweighted wake-sleep do).
        """
        num = int(num)
        if num < 1:
            raise ValueError(f"p.particles needs at least one particle, got {num}")
        block_id, key = self._next("particles")
        top_level = not self._path
        if top_level and self._run.overrides and block_id in self._run.overrides:
            return self._run.overrides[block_id]
        if (fixed or analytic_kl) and body is not None:
            raise ValueError(
                "fixed=True and analytic_kl=True apply to guide particles, p.particles(K, ...)"
            )
        keys = constrain_particles(jax.random.split(key, num))
        run_body = body if body is not None else (lambda sub: sub._standard(fixed, analytic_kl))
        out, sub = self._vmap(block_id, keys, run_body, record_nodes=self._record_nodes)
        block = _Block(
            block_id, num, body is None, fixed, keys, sites=sub._standard_sites, kl=analytic_kl
        )
        if analytic_kl:
            if not top_level:
                raise EstimatorError(
                    "p.particles(K, analytic_kl=True) is valid only at the top level of an "
                    "objective linear in its log weights (the ELBO)."
                )
            self._records.analytic_kl.add(block_id)
        if body is None:
            out = Particles(out, sub._standard_sites, block)
            block.output = stop(out._draw)
        else:
            block.output = jax.tree.map(stop, out)
        if top_level:
            self._records.blocks[block_id] = block
        return out

    def rescore(self, particles: Particles, *, stop: str) -> Particles:
        """The same particles (same draws) scored again with one parameter group stopped.

        ``stop="guide"`` keeps only the model parameters' gradients (and the samples' paths),
        ``stop="model"`` only the guide's: the two halves of doubly reparameterised and
        wake-sleep gradients.
        """
        if stop not in ("guide", "model"):
            raise ValueError(f"rescore(stop={stop!r}): stop must be 'guide' or 'model'")
        block = particles._block
        guide_params = particles.sites.guide_params
        params = {
            n: jax.lax.stop_gradient(v) if (n in guide_params) == (stop == "guide") else v
            for n, v in self._run.params.items()
        }
        run = dataclasses.replace(self._run, params=params)
        block_id, _ = self._next("rescore")
        draw, sub = self._vmap(
            block_id,
            block.keys,
            lambda s: s._standard(block.fixed, block.kl),
            record_nodes=False,
            run=run,
        )
        rescored = Particles(draw, sub._standard_sites, None)
        replace = getattr(particles, "_replace_like_override", None)
        if replace is not None:
            rescored = Particles(replace(rescored._draw), rescored.sites, None)
        return rescored

    def _vmap(
        self,
        block_id: str,
        keys: jax.Array,
        body: Callable,
        record_nodes: bool,
        run: _Run | None = None,
    ) -> tuple[Any, ProgramContext]:
        run = run or self._run
        prefix = block_id + "/"
        probes = {k[len(prefix) :]: v for k, v in self._probes.items() if k.startswith(prefix)}
        made = []

        def one(key, probes):
            sub = ProgramContext(
                run, key, probes, self._path + (block_id,), record_nodes=record_nodes
            )
            made.append(sub)
            return body(sub), sub._records.arrays

        num = keys.shape[0]
        if num == 1:
            # The same particle without the batching a size-1 vmap adds to small models' steps.
            one_probe = jax.tree.map(lambda x: x[0], probes)
            out, arrays = jax.tree.map(lambda x: jnp.expand_dims(x, 0), one(keys[0], one_probe))
        else:
            out, arrays = jax.vmap(one)(keys, probes)
        sub = made[-1]
        self._records.merge(sub._records, block_id, num, arrays, top_level=not self._path)
        return out, sub

    def _standard(self, fixed: bool, analytic_kl: bool = False) -> ParticleDraw:
        """The body of a guide particle block: one particle, its sites recorded."""
        run = self._run
        # The body's own key: a guide particle block's body draws nothing else.
        key = self._key
        assignment = _FixedSamples() if fixed else run.assignment
        particle_args = (run.params, run.model, run.guide, run.args, run.kwargs, assignment)
        if run.multi_sample_guide:
            if analytic_kl:
                raise EstimatorError(
                    "Analytic KL terms with multi_sample_guide=True: the model's prior of a site "
                    "is evaluated once per guide sample, so there is no single KL to a guide site. "
                    "Use analytic_kl=False."
                )
            draw, sites = multi_sample_particle(jax.random.split(key), *particle_args)
        else:
            draw, sites = standard_particle(jax.random.split(key), *particle_args, analytic_kl)
        self._standard_sites = sites
        records = self._records
        if not fixed:
            records.estimators.update(sites.estimators)
            path_sites = tuple(
                n for n, e in sites.estimators.items() if isinstance(e, PathGradient)
            )
            if path_sites:
                records.path_draws["q"] = path_sites
            if sites.enumerated:
                records.enumerated[""] = tuple(sites.enumerated)
            if self._record_nodes:
                for name in sites.measure_valued:
                    records.nodes[name] = ScoreNode(
                        name, sites.estimators[name], None, 1, True, measure_valued=True
                    )
                    records.arrays[name] = {
                        "log_q": draw.mvd_weights[name],
                        "cost_p": jax.lax.stop_gradient(draw.mvd_cost_p[name]),
                        "cost_q": jax.lax.stop_gradient(draw.mvd_cost_q[name]),
                    }
                for name in sites.score_sites:
                    records.nodes[name] = ScoreNode(
                        name, sites.estimators[name], None, 1, rao_blackwellised=True
                    )
                    records.arrays[name] = {
                        "log_q": draw.score_log_q[name],
                        "cost_p": draw.cost_p[name],
                        "cost_q": draw.cost_q[name],
                    }
        return draw._replace(
            log_p=draw.log_p + self._probe("p"),
            log_q=draw.log_q + self._probe("q"),
            score_log_q={},
            cost_p={},
            cost_q={},
            mvd_weights={},
            mvd_cost_p={},
            mvd_cost_q={},
        )

    # --- single draws and scores -------------------------------------------------------------

    def sample(self, program: Callable | None = None, *args: Any, **kwargs: Any) -> Draw:
        """A joint draw of ``program`` (default: the guide) with its per-site estimators.

        With no arguments the guide and model get the objective's own; any other program gets
        exactly the arguments given. Score-function sites of the draw get the whole objective as
        learning signal (with a leave-one-out baseline inside a particle block of size >= 2).
        """
        program, args, kwargs = self._program_args(program, args, kwargs)
        draw_id, key = self._next("sample")
        sampler = _SampleWithEstimators(
            seed(substitute(program, data=self._run.params), key), self._run.assignment
        )
        tr = trace(sampler).get_trace(*args, **kwargs)
        if sampler.enumerated or sampler.measure_valued:
            sites = sorted({**sampler.enumerated, **sampler.measure_valued})
            raise EstimatorError(
                f"Enumerate() or MVD() on {sites}: p.sample draws single values; "
                "sites can be summed out only in a p.particles(K) block of an objective linear in "
                "its log weights. Use vigrad.Score() or vigrad.MVD() for these sites."
            )
        total = jnp.zeros(())
        values = {}
        records = self._records
        for name, site in tr.items():
            if site["type"] != "sample":
                continue
            fn, value = site["fn"], site["value"]
            est = sampler.chosen.get(name)
            if est is None:
                lq = log_prob(fn, value)
            else:
                values[name] = value
                lq = sampler.log_q_terms.get(name)
                if lq is None:
                    lq = _estimator_log_q(name, est, fn, value)
                est.finish(site)
                records.estimators[f"{draw_id}/{name}"] = est
                if est.is_score and self._record_nodes:
                    nid = f"{draw_id}/{name}"
                    records.nodes[nid] = ScoreNode(name, est, None, 1, rao_blackwellised=False)
                    records.arrays[nid] = {"log_q": jnp.sum(log_prob(fn, value))}
            if not site["is_observed"] and isinstance(fn, Delta):
                values[name] = value
            total = total + jnp.sum(_scaled(site, lq))
        path_sites = tuple(n for n, e in sampler.chosen.items() if isinstance(e, PathGradient))
        if path_sites:
            records.path_draws[draw_id] = path_sites
            total = total + self._probe(draw_id)
        return Draw(values, total)

    def score(
        self, program: Callable | None, values: dict[str, jax.Array], *args: Any, **kwargs: Any
    ) -> Draw:
        """The log density of ``program`` (default: the model) with its latent sites set to
        ``values`` (values for sites the program does not have are ignored).

        Every latent site of the program must have a value; observed data must be finite.
        """
        if program is None:
            program = self._run.model
        program, args, kwargs = self._program_args(program, args, kwargs)
        _, key = self._next("score")
        missing = []

        def value_of(msg: dict) -> jax.Array | None:
            if msg["type"] != "sample" or msg["is_observed"]:
                return None
            if msg["name"] not in values:
                missing.append(msg["name"])
                return None
            return values[msg["name"]]

        run = self._run
        program_fn = substitute(
            seed(substitute(program, data=run.params), key), substitute_fn=value_of
        )
        tr = trace(program_fn).get_trace(*args, **kwargs)
        if missing:
            raise ModelGuideMismatchError(
                f"p.score: the program's latent site '{missing[0]}' has no value (values given: "
                f"{sorted(values)}). Draw it first (p.sample) or pass it in the values."
            )
        total = jnp.zeros(())
        used = {}
        for name, site in tr.items():
            if site["type"] != "sample":
                continue
            fn, value = site["fn"], site["value"]
            if site["is_observed"]:
                _check_finite(name, value)
            else:
                expected = tuple(fn.shape(site["kwargs"]["sample_shape"]))
                if tuple(jnp.shape(value)) != expected:
                    raise ModelGuideMismatchError(
                        f"p.score: site '{name}' was given a value of shape {jnp.shape(value)} "
                        f"but the program expects {expected}."
                    )
                used[name] = value
            total = total + jnp.sum(_scaled(site, log_prob(fn, value)))
        return Draw(used, total)


def _check_finite(name: str, value: Any) -> None:
    if isinstance(value, jax.core.Tracer):
        return
    if jnp.issubdtype(jnp.result_type(value), jnp.inexact) and not np.all(
        np.isfinite(np.asarray(value))
    ):
        raise DataError(
            f"Observed site '{name}' contains NaN or infinite values. Remove or impute them, or "
            "mask them with numpyro.handlers.mask(mask=jnp.isfinite(data))."
        )
