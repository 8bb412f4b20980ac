"""The program transformation: an objective program becomes a loss with an unbiased gradient.

A program (a function of :class:`~vigrad.objectives.context.ProgramContext`) returns an estimate
``F`` of the objective. Reverse-mode differentiation of ``F`` gives the pathwise part of the
gradient; every score-function site ``s`` drawn by the program adds ``log q(s) * stop(signal_s)``
(Williams 1992; Schulman, Heess, Weber & Abbeel 2015), formed in
:mod:`vigrad.objectives.surrogate`. This module decides each signal and refuses, before anything is
compiled, every combination that would be biased.

What ``F`` is as a function of the program's log densities is measured, not declared: the program
is run once more with a zero "probe" added to each log density it draws (each top-level particle
block's ``log p`` and ``log q``, each ``p.sample`` draw that has sticking-the-landing sites), and
NumPyro's provenance tracking over the jaxpr of ``dF/dprobe`` tells whether that derivative
depends on the random draws. It does not exactly when ``F`` is affine in that log density with a
deterministic coefficient ``c``. Then:

* sticking-the-landing (:class:`~vigrad.PathGradient`) sites are unbiased, since the dropped term
  ``c * grad_phi log q_phi(z)`` has mean zero (Roeder et al. 2017); otherwise they are refused
  unless the program returns a doubly reparameterised :class:`Estimate` (Tucker et al. 2019);
* a score-function site of a top-level ``p.particles(K)`` block gets the Rao-Blackwellised signal
  ``c_p * cost_p + c_q * cost_q`` (its downstream model and guide log densities in its own
  particle), which depends on its own particle only, so leave-one-out baselines are valid;
* enumerated and measure-valued sites, which replace a site's expectation inside the log weight,
  are valid; otherwise they are refused.

Any other score-function site gets the whole estimate ``F`` as signal (the DiCE estimator of
Foerster et al. 2018); inside a top-level block of ``K >= 2`` particles the baseline
``F_{-k}`` is subtracted: the program re-run with particle ``k``'s output replaced by the mean of
the others' (for the IWELBO, VIMCO's baseline; Mnih & Rezende 2016). ``F_{-k}`` does not depend on
particle ``k``'s draws, so the signal stays unbiased for every program.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from numpyro.ops.provenance import eval_provenance

from vigrad.errors import EstimatorError
from vigrad.estimators.path import PathGradient
from vigrad.objectives.context import Particles, ProgramContext, ScoreNode, _Block, _Run

stop = jax.lax.stop_gradient


@dataclasses.dataclass(frozen=True)
class Estimate:
    """What a program may return instead of a scalar: its estimate with its own gradient.

    Attributes:
        value: the objective estimate (to be maximised), a scalar.
        surrogate: a scalar whose gradient is the program's gradient estimate (default: ``value``).
            A program that gives one draws no score-function sites (``p.particles(K,
            fixed=True)`` draws with stopped samples).
        doubly_reparameterised: the surrogate is a doubly reparameterised form (Tucker, Lawson,
            Gu & Maddison 2019) in which sticking-the-landing sites are unbiased although the
            objective is not linear in their log density; every sampled site must then use
            :class:`~vigrad.PathGradient`.
    """

    value: jax.Array
    surrogate: jax.Array | None = None
    doubly_reparameterised: bool = False


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """A program run and transformed: the input of the surrogate.

    Attributes:
        value: the objective estimate.
        path: a scalar whose gradient is the pathwise part of the gradient estimate.
        nodes: node id -> the score-function sites drawn.
        log_q: node id -> the site's ``log q``, differentiable in the parameters (for
            measure-valued nodes: ``q(b)`` per support value ``b``).
        signals: node id -> its stopped learning signal, shaped like ``log_q``.
        independent: node id -> whether particle ``k``'s signal depends on particle ``k`` only
            (leave-one-out control variates are valid only then).
        mutable: the updated values of ``numpyro.mutable`` sites (from a top-level block of one
            particle; with more particles they are not defined and left out, as NumPyro does).
    """

    value: jax.Array
    path: jax.Array
    nodes: dict[str, ScoreNode]
    log_q: dict[str, jax.Array]
    signals: dict[str, jax.Array]
    independent: dict[str, bool]
    mutable: dict[str, Any] = dataclasses.field(default_factory=dict)


Program = Callable[[ProgramContext], Any]


def as_estimate(out: Any) -> Estimate:
    if isinstance(out, Estimate):
        return out
    value = jnp.asarray(out)
    if value.shape != ():
        raise ValueError(
            f"An objective program must return a scalar (or vigrad.Estimate), got shape "
            f"{value.shape}. Reduce over particles, e.g. jnp.mean(p.particles(K).log_w)."
        )
    return Estimate(value)


def _run(program: Program, run: _Run, rng_key, probes=None, record_nodes=True):
    ctx = ProgramContext(run, rng_key, probes, record_nodes=record_nodes)
    return as_estimate(program(ctx)), ctx._records


def _differentiated(estimate: Estimate) -> jax.Array:
    return estimate.value if estimate.surrogate is None else estimate.surrogate


def transform(
    program: Program,
    name: str,
    run: _Run,
    rng_key: jax.Array,
    leave_one_out: bool = True,
    checked: bool = True,
) -> Evaluation:
    """Run ``program`` and turn it into an :class:`Evaluation` (see the module docstring).

    ``checked=False`` runs biased combinations instead of refusing them: only to show, as a
    negative control, that a statistical test detects their bias.
    """
    try:
        return _transform(program, name, run, rng_key, leave_one_out, checked)
    except jax.errors.UnexpectedTracerError as err:
        raise EstimatorError(
            f"{name}: a primitive (p.particles, p.sample, p.score) was called inside JAX control "
            "flow (jax.lax.cond, switch, scan, while_loop or a jax.vmap of your own), whose "
            "values cannot leave it. Draw first, then branch on the values with jax.lax.cond; "
            "for repeated draws use p.particles(K, body)."
        ) from err


def _transform(
    program: Program,
    name: str,
    run: _Run,
    rng_key: jax.Array,
    leave_one_out: bool,
    checked: bool,
) -> Evaluation:
    estimate, records = _run(program, run, rng_key)
    nodes = records.nodes
    if estimate.surrogate is not None and nodes:
        site = next(iter(nodes.values())).site
        raise EstimatorError(
            f"{name}: site '{site}' is a score-function site, but the program returns its own "
            "gradient surrogate, which has no learning signal for it. Draw it with "
            "p.particles(K, fixed=True), or return the estimate alone."
        )
    if estimate.doubly_reparameterised and checked:
        for where, est in records.estimators.items():
            if not isinstance(est, PathGradient):
                raise EstimatorError(
                    f"{name}: site '{where.rsplit('/', 1)[-1]}' uses {est!r}, but the doubly "
                    "reparameterised gradient needs vigrad.PathGradient() on every sampled guide "
                    "site. Remove its estimator assignment (PathGradient is the default here), "
                    "or use vigrad.VIMCO for score-function sites."
                )
    path_draws = {} if estimate.doubly_reparameterised or not checked else records.path_draws
    blocks = {
        b.id: b
        for b in records.blocks.values()
        if b.standard
        and (
            b.id in records.enumerated
            or b.id in records.analytic_kl
            or any(n.block == b.id and n.rao_blackwellised for n in nodes.values())
        )
    }
    random = {}
    if path_draws or blocks:
        random = _random_coefficients(program, run, rng_key, records.probe_shapes)
    for pid, sites in path_draws.items():
        if random[pid]:
            raise EstimatorError(
                f"PathGradient() on site '{sites[0]}' is biased in {name}: the objective is not "
                f"linear in the site's log q (its weight in the objective depends on the draws), "
                "so the dropped score term does not average to zero. Use vigrad.Reparam() for "
                "this site, or the doubly reparameterised form (vigrad.DReG for IWELBO and Rényi "
                "bounds)."
            )
    affine = {
        bid: not b.values_used and not random[f"{bid}/p"] and not random[f"{bid}/q"]
        for bid, b in blocks.items()
    }
    for node in nodes.values():
        linear = node.rao_blackwellised and affine.get(node.block, False)
        if checked and node.measure_valued and not linear:
            raise EstimatorError(
                f"MVD() on site '{node.site}' is biased in {name}: its derivative is computed from "
                "the site's downstream cost, which is its learning signal only where the "
                "objective is linear in the particles' log weights (the ELBO) and the site is "
                "drawn in a top-level p.particles(K) block. Use vigrad.Score() for it."
            )
    for bid in records.analytic_kl:
        if checked and not affine.get(bid, False):
            raise EstimatorError(
                f"Analytic KL terms are biased in {name}: they replace each particle's log ratio "
                "by its expectation, which estimates only objectives linear in the particles' "
                "log weights (the ELBO). Use analytic_kl=False."
            )
    for bid, sites in records.enumerated.items():
        if checked and not affine.get(bid, False):
            raise EstimatorError(
                f"Enumerate() on {list(sites)} is biased in {name}: the objective is not linear "
                "in the particles' log weights, so an expected log weight does not estimate it. "
                "Use vigrad.ELBO, or vigrad.Score() for these sites (multi-sample objectives give "
                "them per-particle baselines)."
            )
    coefficients = {}
    if any(affine.values()):
        zeros = {p: jnp.zeros(s) for p, s in records.probe_shapes.items()}
        objective_at = lambda probes: _differentiated(
            _run(program, run, rng_key, probes, record_nodes=False)[0]
        )
        coefficients = jax.grad(objective_at)(zeros)

    value = estimate.value
    loo_cache: dict[str, jax.Array] = {}
    signals, independent, log_q = {}, {}, {}
    for nid, node in nodes.items():
        arrays = records.arrays[nid]
        lq = arrays["log_q"]
        log_q[nid] = lq
        if node.rao_blackwellised and affine.get(node.block, False):
            c_p = _leading(coefficients[f"{node.block}/p"], lq.ndim)
            c_q = _leading(coefficients[f"{node.block}/q"], lq.ndim)
            # Measure-valued nodes: q(b) and the costs carry a branch axis after the particles'.
            signals[nid] = stop(c_p * arrays["cost_p"] + c_q * arrays["cost_q"])
            independent[nid] = True
            continue
        signal = stop(value)
        if node.block is not None and node.num >= 2 and leave_one_out:
            if node.block not in loo_cache:
                block = records.blocks[node.block]
                loo_cache[node.block] = _leave_one_out(program, run, rng_key, block)
            signal = _leading(signal - loo_cache[node.block], lq.ndim)
        signals[nid] = jnp.broadcast_to(stop(signal), lq.shape)
        independent[nid] = False
    mutable = _mutable_state(records.blocks.values(), name)
    return Evaluation(value, _differentiated(estimate), nodes, log_q, signals, independent, mutable)


def _mutable_state(blocks, name: str) -> dict[str, Any]:
    for block in blocks:
        if not block.standard or not block.output.mutable:
            continue
        if block.num > 1:
            warnings.warn(
                f"{name}: numpyro.mutable sites {sorted(block.output.mutable)} are not updated "
                f"with {block.num} particles (each particle would update them differently); use "
                "one particle to train models with mutable state.",
                stacklevel=2,
            )
            return {}
        return jax.tree.map(lambda x: x[0], block.output.mutable)
    return {}


def _leading(x: jax.Array, ndim: int) -> jax.Array:
    """``x`` with trailing unit axes, to broadcast over an array's remaining axes."""
    x = jnp.asarray(x)
    return x.reshape(x.shape + (1,) * (ndim - x.ndim))


def _random_coefficients(
    program: Program, run: _Run, rng_key: jax.Array, shapes: dict[str, tuple[int, ...]]
) -> dict[str, bool]:
    """Probe id -> whether ``dF/dprobe`` depends on the draws (or on the probes themselves)."""

    def coefficients(key, probes):
        objective_at = lambda pr: _differentiated(_run(program, run, key, pr, False)[0])
        return jax.grad(objective_at)(probes)

    zeros = {p: jnp.zeros(s) for p, s in shapes.items()}
    deps = eval_provenance(coefficients, key=rng_key, probes=zeros)
    return {p: bool(deps[p] & {"key", "probes"}) for p in shapes}


def _leave_one_out(program: Program, run: _Run, rng_key: jax.Array, block: _Block) -> jax.Array:
    """``[K]``: the estimate with block particle ``k``'s output replaced by the others' mean."""

    def without(k):
        replace = lambda tree: jax.tree.map(lambda x: _replace_leaf(x, k), tree)
        if block.standard:
            out = Particles(replace(block.output), block.sites, dataclasses.replace(block))
            out._replace_like_override = replace
        else:
            out = replace(block.output)
        overridden = dataclasses.replace(run, overrides={block.id: out})
        return _run(program, overridden, rng_key, record_nodes=False)[0].value

    return stop(jax.vmap(without)(jnp.arange(block.num)))


def _replace_leaf(x: jax.Array, k: jax.Array) -> jax.Array:
    """Particle ``k`` of ``x`` replaced by the mean of the others (by another particle's value
    where a mean is not a value, as for discrete draws); independent of particle ``k``."""
    n = x.shape[0]
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return x.at[k].set((jnp.sum(x, axis=0) - x[k]) / (n - 1))
    return x.at[k].set(x[(k + 1) % n])
