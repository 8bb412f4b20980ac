"""Drawing particles: the guide traced under its per-site estimators, the model scored on it.

One particle is one joint draw ``z ~ q`` with its log weight ``log w = log p(x, z) - log q(z)``, where
every guide site's value and ``log q`` term carry the gradient path that its estimator chose. For
score-function sites the particle also carries ``log q`` of the site (the score term) and its
Rao-Blackwellised cost: the model and guide log densities downstream of the site (found by NumPyro's
provenance tracking, as in ``TraceGraph_ELBO``), summed to the site's plates. Particles are drawn with
``jax.vmap`` over keys; everything here is traced once per compilation and checked then, so bad
input fails before anything is compiled.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions import Delta
from numpyro.distributions.kl import kl_divergence
from numpyro.handlers import replay, seed, substitute, trace
from numpyro.infer.elbo import MultiFrameTensor
from numpyro.ops.provenance import eval_provenance
from numpyro.primitives import Messenger, apply_stack

from vigrad.errors import DataError, EstimatorError, ModelGuideMismatchError
from vigrad.estimators.assignment import Assignment
from vigrad.estimators.base import Estimator
from vigrad.estimators.enum import branch_value, num_branches
from vigrad.estimators.log_prob import log_prob
from vigrad.traces import Sites, trace_program, values


class ParticleDraw(NamedTuple):
    """The arrays of one particle (a pytree; a leading particle axis is added by ``vmap``).

    Attributes:
        log_p: the model's log density ``log p(x, z)`` (observed and latent sites, factors).
        log_q: the guide's log density ``log q(z)``, each site's term along its estimator's path.
        values: the guide's latent values by site name.
        score_log_q: site -> ``[*plates]`` ``log q`` of each score-function site (no subsampling
            scale), differentiable in the guide parameters only.
        cost_p: site -> ``[*plates]`` the stopped model log densities downstream of each
            score-function site (Rao-Blackwellised, found by provenance tracking).
        cost_q: site -> ``[*plates]`` the stopped guide log densities downstream of it.
        enum_weights: site -> ``q(z = branch value)`` per element of each enumerated site, in one
            branch (internal to enumeration).
        enum_costs: site -> the differentiable downstream cost of each enumerated site, reduced
            to its plates, in one branch (internal to enumeration).
        mvd_weights, mvd_cost_p, mvd_cost_q: per measure-valued site, ``q(b)`` per element and the
            downstream model and guide costs with the site at support value ``b``, with a leading
            branch axis (see :mod:`vigrad.estimators.mvd`).
        mutable: the values of the guide's and model's ``numpyro.mutable`` sites after the
            particle (e.g. batch-norm statistics of neural networks in them).
        site_log_w: site name -> its share of the log weight, ``log p`` minus ``log q`` of the
            site (the terms of a site that the model or the guide lacks count as 0).
    """

    log_p: jax.Array
    log_q: jax.Array
    values: dict[str, jax.Array]
    score_log_q: dict[str, jax.Array]
    cost_p: dict[str, jax.Array]
    cost_q: dict[str, jax.Array]
    enum_weights: dict[str, jax.Array] = {}
    enum_costs: dict[str, jax.Array] = {}
    mvd_weights: dict[str, jax.Array] = {}
    mvd_cost_p: dict[str, jax.Array] = {}
    mvd_cost_q: dict[str, jax.Array] = {}
    mutable: dict[str, Any] = {}
    site_log_w: dict[str, jax.Array] = {}


@dataclasses.dataclass(frozen=True)
class ParticleSites:
    """Static facts about one particle's traces, read while tracing it."""

    estimators: dict[str, Estimator]
    score_sites: tuple[str, ...]
    enumerated: dict[str, int]
    measure_valued: dict[str, int]
    guide_params: frozenset[str]
    guide_latents: tuple[str, ...]
    model_latents: tuple[str, ...]


class _SampleWithEstimators(Messenger):
    """Draws every latent guide site with the sampler of its estimator."""

    def __init__(
        self,
        fn: Callable,
        assignment: Assignment,
        branch: jax.Array | None = None,
        mvd: tuple[str, jax.Array] | None = None,
    ):
        self.assignment = assignment
        self.branch = branch
        self.mvd = mvd
        self.chosen: dict[str, Estimator] = {}
        self.log_q_terms: dict[str, jax.Array] = {}
        self.enumerated: dict[str, int] = {}
        self.enum_weights: dict[str, jax.Array] = {}
        self.measure_valued: dict[str, int] = {}
        self.mvd_weights: dict[str, jax.Array] = {}
        super().__init__(fn)

    def process_message(self, msg: dict) -> None:
        if msg["type"] != "sample" or msg["is_observed"] or msg["value"] is not None:
            return
        if isinstance(msg["fn"], Delta):
            return
        estimator = self.assignment.resolve(msg)
        self.chosen[msg["name"]] = estimator
        kwargs = msg["kwargs"]
        if getattr(estimator, "is_enumerated", False):
            self._enumerate(msg, estimator)
            return
        if getattr(estimator, "is_measure_valued", False):
            self.measure_valued[msg["name"]] = num_branches(msg["fn"])
            if self.mvd is not None and self.mvd[0] == msg["name"]:
                self._branch(msg, estimator, self.mvd[1], self.mvd_weights)
                return
        drawn = estimator.draw(msg["fn"], kwargs["rng_key"], kwargs["sample_shape"])
        msg["value"] = drawn.value
        if drawn.log_q is not None:
            self.log_q_terms[msg["name"]] = drawn.log_q
        msg["infer"] = {**(msg["infer"] or {}), "vigrad_estimator": estimator}
        if drawn.extras is not None:
            msg["infer"]["vigrad_extras"] = drawn.extras

    def _enumerate(self, msg: dict, estimator: Estimator) -> None:
        # Without a branch (the first trace, which finds the enumerated sites) every enumerated
        # site takes its first support value.
        self.enumerated[msg["name"]] = estimator.num_branches(msg["fn"])
        branch = jnp.zeros((), jnp.int32) if self.branch is None else self.branch
        self._branch(msg, estimator, branch, self.enum_weights)

    @staticmethod
    def _branch(msg: dict, estimator: Estimator, branch: jax.Array, weights: dict) -> None:
        """Set every element of the site to support value ``branch``; record ``q(branch)``."""
        fn = msg["fn"]
        value, real = branch_value(fn, branch, msg["kwargs"]["sample_shape"])
        msg["value"] = value
        weights[msg["name"]] = jnp.where(real, jnp.exp(log_prob(fn, value)), 0.0)
        msg["infer"] = {**(msg["infer"] or {}), "vigrad_estimator": estimator}


def _analytic_kl(model_tr: dict, guide_tr: dict, sampler: _SampleWithEstimators) -> dict:
    """Site -> ``KL(q || p)`` (scaled, summed) for sampled latent sites where it is known."""
    out = {}
    for name, model_site in Sites(model_tr).latent.items():
        if name not in guide_tr:
            continue
        if name in sampler.enumerated or name in sampler.measure_valued:
            continue
        guide_site = guide_tr[name]
        try:
            kl = kl_divergence(guide_site["fn"], model_site["fn"])
        except NotImplementedError:
            continue
        out[name] = jnp.sum(_scaled(guide_site, kl))
    return out


def _check_prior_order(model, args, kwargs, params, guide_tr: dict, kl_sites: dict) -> None:
    """``E_q[log p(z | pa) - log q(z | .)] = -KL`` only if the prior's parents ``pa`` are drawn
    before ``z`` in the guide (NumPyro's mean-field requirement): check it by provenance."""
    latents = values(Sites(guide_tr).latent)
    order = list(latents)

    def priors(**latent):
        tr = trace_program(model, args, kwargs, params=params, data=latent).trace
        return {n: jax.tree.leaves(tr[n]["fn"]) for n in kl_sites}

    for name, leaves in eval_provenance(priors, **latents).items():
        parents = frozenset().union(*leaves) if leaves else frozenset()
        later = sorted(parents & set(order[order.index(name) + 1 :]))
        if later:
            raise EstimatorError(
                f"Analytic KL for site '{name}': its prior depends on {later}, which the guide "
                f"draws after '{name}', so the KL between the conditionals is not the expected "
                f"log ratio. Draw {later} before '{name}' in the guide, or use "
                "analytic_kl=False."
            )


def _mutable_values(tr: dict) -> dict[str, Any]:
    return values(Sites(tr).mutable)


def _estimator_log_q(name: str, est: Estimator, fn: Any, value: jax.Array) -> jax.Array:
    try:
        return est.log_q(fn, value)
    except NotImplementedError as err:
        raise EstimatorError(
            f"{est!r} on site '{name}' needs log q at the sampled value, which "
            f"{type(fn).__name__} can only evaluate by inverting its transform ({err}). Use "
            "vigrad.Reparam(), which reuses the intermediates recorded while sampling, or a "
            "vigrad.flows guide, whose path gradient needs no inverse."
        ) from None


def _check_shape(name: str, fn: Any, sample_shape: tuple, value: jax.Array) -> None:
    expected = tuple(fn.shape(sample_shape))
    got = tuple(jnp.shape(value))
    if expected != got:
        several = ""
        if got[1:] == expected:
            several = (
                " If the guide draws several samples per site along a leading axis, use "
                "vigrad.ELBO(multi_sample_guide=True)."
            )
        raise ModelGuideMismatchError(
            f"Site '{name}' has shape {got} in the guide but the model expects {expected} "
            "(batch shape from its plates plus event shape). Make the guide's distribution "
            f"for this site match: check .to_event(), plates and parameter shapes.{several}"
        )


GUIDE_SITE_QUERY = "vigrad_guide_site"
"""Type of the message :func:`guide_site` sends up NumPyro's handler stack."""


class GuideSites(Messenger):
    """Runs the model with a guide trace's sites in reach of model-side helpers.

    A helper asks with :func:`guide_site`, which sends a message up NumPyro's effect stack; this
    handler answers it from ``sites`` (site name -> the guide's site record), so what is visible
    is exactly the trace of the particle being scored, for as long as the model runs. It also
    checks the guide's value of each model sample site as it is reached, before the model uses
    a wrong-shaped value.
    """

    def __init__(self, fn: Callable, sites: dict[str, dict]):
        self.sites = sites
        super().__init__(fn)

    def process_message(self, msg: dict) -> None:
        if msg["type"] == GUIDE_SITE_QUERY:
            # The innermost handler answers: nested traces each see their own particle.
            if msg["value"] is None:
                msg["value"] = self.sites.get(msg["site"])
            return
        if msg["type"] != "sample" or msg["is_observed"]:
            return  # e.g. numpyro.subsample messages, which have no site name
        site = self.sites.get(msg["name"])
        if site is not None:
            _check_shape(msg["name"], msg["fn"], msg["kwargs"]["sample_shape"], site["value"])


def guide_site(name: str) -> dict | None:
    """The guide's site ``name`` of the particle being scored, when called from inside the model.

    Model-side helpers use it to reach what an estimator recorded while sampling the site (its
    estimator in ``site["infer"]["vigrad_estimator"]`` and extras in
    ``site["infer"]["vigrad_extras"]``). Returns ``None`` outside vigrad's particle tracing.
    """
    # No "name" key: NumPyro's trace handler records only named messages.
    msg = {
        "type": GUIDE_SITE_QUERY,
        "site": name,
        "fn": lambda: None,
        "args": (),
        "kwargs": {},
        "value": None,
    }
    return apply_stack(msg)["value"]


def _scaled(site: dict, log_prob: jax.Array) -> jax.Array:
    scale = site["scale"]
    return log_prob if scale is None else scale * log_prob


def _reduce_to_plates(x: jax.Array, frames: list) -> jax.Array:
    """Sum over every axis that is not a plate of the site (keeping dims for broadcasting)."""
    x = jnp.asarray(x)
    keep = {f.dim for f in frames}
    axes = tuple(i for i in range(x.ndim) if (i - x.ndim) not in keep)
    return jnp.sum(x, axis=axes, keepdims=True)


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_traces(model_tr: dict, guide_tr: dict, assignment: Assignment) -> None:
    guide_sites = Sites(guide_tr)
    sampled = set(guide_sites.sampled)
    assignment.check_names(sampled, set(guide_sites.latent) - sampled)
    for name, site in Sites(model_tr).samples.items():
        if site["is_observed"]:
            value = site["value"]
            if _is_concrete(value) and jnp.issubdtype(jnp.result_type(value), jnp.inexact):
                if not np.all(np.isfinite(np.asarray(value))):
                    raise DataError(
                        f"Observed site '{name}' contains NaN or infinite values. Remove or impute "
                        "them, or mask them with numpyro.handlers.mask(mask=jnp.isfinite(data))."
                    )
            continue
        if name not in guide_tr:
            raise ModelGuideMismatchError(
                f"The model's latent site '{name}' has no matching sample site in the guide. "
                f"Add numpyro.sample('{name}', ...) to the guide (guide sites: {sorted(sampled)})."
            )


def _downstream(
    model: Callable, guide: Callable, args: tuple, kwargs: dict, params: dict, latents: dict
) -> tuple[dict[str, frozenset], dict[str, frozenset]]:
    """Which score-function sites each model and guide log density depends on (provenance)."""

    def log_densities(**values: jax.Array) -> tuple[dict, dict]:
        def substitute_latent(msg: dict) -> jax.Array | None:
            if msg["name"] in values:
                # Keep the provenance of the site's parents: their change moves this site's law.
                return 0 * msg["fn"](*msg["args"], **msg["kwargs"]) + values[msg["name"]]
            return None

        g = substitute(seed(substitute(guide, data=params), 0), substitute_fn=substitute_latent)
        m = substitute(seed(substitute(model, data=params), 0), substitute_fn=substitute_latent)
        guide_tr = trace(g).get_trace(*args, **kwargs)
        model_tr = trace(replay(m, guide_tr)).get_trace(*args, **kwargs)
        model_log_p, guide_log_q = (
            {n: s["fn"].log_prob(s["value"]) for n, s in Sites(tr).samples.items()}
            for tr in (model_tr, guide_tr)
        )
        return model_log_p, guide_log_q

    return eval_provenance(log_densities, **latents)


def trace_particle(
    rng_key: jax.Array,
    params: dict,
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    assignment: Assignment,
    branch: jax.Array | None = None,
    mvd: tuple[str, jax.Array] | None = None,
    analytic_kl: bool = False,
) -> tuple[ParticleDraw, ParticleSites]:
    """One particle (no particle axis) and the static facts read while tracing it.

    ``rng_key`` holds two keys, for the guide and the model. ``branch`` selects the support value
    of every enumerated site (see :mod:`vigrad.estimators.enum`); ``mvd = (site, branch)`` sets
    that measure-valued site to a support value (otherwise it is sampled; see
    :mod:`vigrad.estimators.mvd`). The guide's observed sites and
    factors belong to ``log q``, as in NumPyro's ELBOs. With ``analytic_kl``, a latent site whose
    guide and prior distributions have a closed-form KL divergence contributes ``-KL(q || p)``
    instead of ``log p(z) - log q(z)`` at its draw (as NumPyro's ``TraceMeanField_ELBO``).
    """
    key_guide, key_model = rng_key
    sampler = _SampleWithEstimators(
        seed(substitute(guide, data=params), key_guide), assignment, branch, mvd
    )
    guide_tr = trace(sampler).get_trace(*args, **kwargs)
    chosen = sampler.chosen
    mutable = _mutable_values(guide_tr)
    # ``seed`` outside ``replay``: replay fills the latent values first, so the model spends no
    # random numbers on sites whose values come from the guide. The model sees the guide's
    # updated mutable values, as in NumPyro's ELBOs.
    model_fn = substitute(seed(replay(model, guide_tr), key_model), data={**params, **mutable})
    model_tr = trace(GuideSites(model_fn, guide_tr)).get_trace(*args, **kwargs)
    _check_traces(model_tr, guide_tr, assignment)
    for name, est in chosen.items():
        est.finish(guide_tr[name])
    mutable.update(_mutable_values(model_tr))

    log_p_sites = {
        n: _scaled(s, log_prob(s["fn"], s["value"])) for n, s in Sites(model_tr).samples.items()
    }
    log_q_sites = {}
    for n, s in Sites(guide_tr).samples.items():
        est = chosen.get(n)
        if n in sampler.log_q_terms:
            lq = sampler.log_q_terms[n]
        elif est is None or n in sampler.enumerated:
            lq = log_prob(s["fn"], s["value"])
        else:
            lq = _estimator_log_q(n, est, s["fn"], s["value"])
        log_q_sites[n] = _scaled(s, lq)

    kl_sites = _analytic_kl(model_tr, guide_tr, sampler) if analytic_kl else {}
    if kl_sites:
        _check_prior_order(model, args, kwargs, params, guide_tr, kl_sites)
    for n, kl in kl_sites.items():
        log_p_sites[n], log_q_sites[n] = -kl, jnp.zeros(())

    score_sites = tuple(n for n, est in chosen.items() if est.is_score)
    enum_sites = tuple(sampler.enumerated)
    mvd_sites = tuple(sampler.measure_valued)
    score_log_q, cost_p, cost_q, enum_costs, mvd_cost_p, mvd_cost_q = {}, {}, {}, {}, {}, {}
    if score_sites or enum_sites or mvd_sites:
        latents = {n: guide_tr[n]["value"] for n in score_sites + enum_sites + mvd_sites}
        model_deps, guide_deps = _downstream(model, guide, args, kwargs, params, latents)
        # A KL term depends on the site's parents, not on the site's draw.
        for n in kl_sites:
            model_deps[n] = (model_deps[n] | guide_deps[n]) - {n}
        terms = [(model_tr[m], lp, model_deps[m], True) for m, lp in log_p_sites.items()]
        terms += [(guide_tr[g], lq, guide_deps[g], False) for g, lq in log_q_sites.items()]
        # Each term summed over its non-plate dimensions first: only plate dimensions index
        # independent elements, and a site outside plates may still have batch dimensions (an
        # autoguide's unpacked latents, a vector-valued site without to_event).
        terms = [
            (site, _reduce_to_plates(t, site["cond_indep_stack"]), d, is_p)
            for site, t, d, is_p in terms
        ]
        _check_enumerated(enum_sites + mvd_sites, guide_tr, terms, set(latents), chosen)
        for name in score_sites + enum_sites + mvd_sites:
            frames = guide_tr[name]["cond_indep_stack"]
            costs = {True: MultiFrameTensor(), False: MultiFrameTensor()}
            for site, term, deps, is_p in terms:
                if name in deps:
                    costs[is_p].add((site["cond_indep_stack"], term))
            c_p, c_q = (_reduce_to_plates(costs[s].sum_to(frames), frames) for s in (True, False))
            if name in sampler.enumerated:
                enum_costs[name] = c_p - c_q
                continue
            if name in sampler.measure_valued:
                mvd_cost_p[name], mvd_cost_q[name] = c_p, c_q
                continue
            site = guide_tr[name]
            # The score term uses the unscaled log q: the subsampling scale is already in the cost.
            lq = _reduce_to_plates(log_prob(site["fn"], site["value"]), frames)
            shape = jnp.broadcast_shapes(lq.shape, c_p.shape, c_q.shape)
            score_log_q[name] = jnp.broadcast_to(lq, shape)
            cost_p[name] = jax.lax.stop_gradient(jnp.broadcast_to(c_p, shape))
            cost_q[name] = jax.lax.stop_gradient(jnp.broadcast_to(c_q, shape))

    log_p = sum((jnp.sum(v) for v in log_p_sites.values()), start=jnp.zeros(()))
    log_q = sum((jnp.sum(v) for v in log_q_sites.values()), start=jnp.zeros(()))
    guide_sites = Sites(guide_tr)
    sites = ParticleSites(
        estimators=dict(chosen),
        score_sites=score_sites,
        enumerated=dict(sampler.enumerated),
        measure_valued=dict(sampler.measure_valued),
        guide_params=frozenset(guide_sites.params),
        guide_latents=tuple(guide_sites.latent),
        model_latents=tuple(Sites(model_tr).latent),
    )
    latent_values = {n: guide_tr[n]["value"] for n in sites.guide_latents}
    draw = ParticleDraw(
        log_p,
        log_q,
        latent_values,
        score_log_q,
        cost_p,
        cost_q,
        dict(sampler.enum_weights),
        enum_costs,
        dict(sampler.mvd_weights),
        mvd_cost_p,
        mvd_cost_q,
        mutable,
        {
            n: jnp.sum(log_p_sites.get(n, 0.0)) - jnp.sum(log_q_sites.get(n, 0.0))
            for n in {**log_p_sites, **log_q_sites}
        },
    )
    return draw, sites


def _check_enumerated(
    enum_sites: tuple[str, ...],
    guide_tr: dict,
    terms: list,
    tracked: set[str],
    estimators: dict[str, Estimator],
) -> None:
    """Enumeration (and measure-valued derivatives) in parallel over plates is exact only if each
    term downstream of such a site depends on no other tracked site and lives in (at least) that
    site's plates."""
    for name in enum_sites:
        site = guide_tr[name]
        est = f"{type(estimators[name]).__name__}()"
        plate_dims = {f.dim for f in site["cond_indep_stack"]}
        batch = tuple(site["fn"].shape(site["kwargs"]["sample_shape"]))
        for i, size in enumerate(batch):
            if size > 1 and i - len(batch) not in plate_dims:
                raise EstimatorError(
                    f"{est} on site '{name}': its dimension {i - len(batch)} (size {size}) "
                    "is not a numpyro.plate, so its elements cannot be summed out one by one. "
                    "Declare the dimension with a plate, or use vigrad.Score() for this site."
                )
        frames = {f.name for f in site["cond_indep_stack"]}
        for term_site, _, deps, _ in terms:
            if name not in deps:
                continue
            others = sorted((deps & tracked) - {name})
            # A measure-valued site is set to each support value in traces of its own, the other
            # sites drawn as usual, so it may share terms with them; enumerated sites share the
            # branches of one trace.
            if others and getattr(estimators[name], "is_enumerated", False):
                raise EstimatorError(
                    f"{est} on site '{name}': the term of site '{term_site['name']}' also "
                    f"depends on {others}, which are sampled with score-function gradients, "
                    f"enumerated or measure-valued too. Use {est} on '{name}' alone, or "
                    "vigrad.Score() for it."
                )
            missing = frames - {f.name for f in term_site["cond_indep_stack"]}
            if missing:
                raise EstimatorError(
                    f"{est} on site '{name}': site '{term_site['name']}' depends on it "
                    f"outside its plates {sorted(missing)}, so the plate elements cannot be "
                    "summed out one by one. Use vigrad.Score() for this site."
                )


def standard_particle(
    rng_key: jax.Array,
    params: dict,
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    assignment: Assignment,
    analytic_kl: bool = False,
) -> tuple[ParticleDraw, ParticleSites]:
    """One particle of ``guide`` scored under ``model``, its enumerated sites summed out.

    Sites with the :class:`~vigrad.estimators.enum.Enumerate` estimator are summed out of the log
    weight: the particle's ``log p - log q`` is then its expected log weight over those sites, and
    ``cost_p``/``cost_q``/``score_log_q`` belong to the other sites. That is the right quantity only
    for objectives linear in the log weight, which the program transformation checks.
    """
    trace_one = lambda branch=None, mvd=None: trace_particle(
        rng_key, params, model, guide, args, kwargs, assignment, branch, mvd, analytic_kl
    )
    draw, sites = trace_one()
    if sites.enumerated:
        # The trace above found the enumerated sites; its values are unused and compiled away.
        branches = jnp.arange(max(sites.enumerated.values()))
        draw = _sum_out(jax.vmap(lambda b: trace_one(b)[0])(branches))
    weights, cost_p, cost_q = {}, {}, {}
    for name, size in sites.measure_valued.items():
        per_branch = jax.vmap(lambda b, n=name: trace_one(mvd=(n, b))[0])(jnp.arange(size))
        weights[name] = per_branch.mvd_weights[name]
        cost_p[name] = per_branch.mvd_cost_p[name]
        cost_q[name] = per_branch.mvd_cost_q[name]
    if weights:
        draw = draw._replace(mvd_weights=weights, mvd_cost_p=cost_p, mvd_cost_q=cost_q)
    return draw, sites


def _sum_out(per_branch: ParticleDraw) -> ParticleDraw:
    """One particle's expected log weight over its enumerated sites, from its ``[B]`` branches:
    ``log w(branch 0) + sum_sites sum_elements sum_b q(b) (cost(b) - cost(branch 0))``."""
    first = jax.tree.map(lambda x: x[0], per_branch)
    log_w = first.log_p - first.log_q
    for name, cost in per_branch.enum_costs.items():
        weight = per_branch.enum_weights[name]
        ndim = max(weight.ndim, cost.ndim)
        # Right-align the element axes of both, keeping the branch axis first.
        align = lambda x, n=ndim: x.reshape(x.shape[:1] + (1,) * (n - x.ndim) + x.shape[1:])
        log_w = log_w + jnp.sum(align(weight) * align(cost - cost[0]))
    return first._replace(log_p=log_w + first.log_q, enum_weights={}, enum_costs={})
