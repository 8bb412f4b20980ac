"""Comparing gradient estimators per site, and choosing one per site by measurement.

For each guide sample site, each candidate estimator is put on that site (the other sites keep
their estimators) and :func:`~vigrad.diagnostics.gradients.gradient_variance` measures, at the
given parameters, the variance of the gradient of the site's own guide parameters and the wall
time of one estimate. An unbiased estimator's variance falls as ``1/n`` with ``n`` averaged
estimates, so ``variance x seconds`` is the cost of reaching a given precision, and the candidate
that minimises it is the most efficient one for that site (Glynn & Whitt 1992). Candidates that
cannot serve a site (``estimator.check`` fails, or tracing the objective with it raises an
:class:`~vigrad.errors.EstimatorError`) are listed with the reason and never chosen.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
from numpyro.ops.provenance import eval_provenance

from vigrad.diagnostics.gradients import GradientStats, gradient_variance, make_objective
from vigrad.errors import VigradError
from vigrad.estimators.base import Estimator
from vigrad.registry import ESTIMATORS, is_candidate
from vigrad.traces import trace_program, values


def estimator_name(estimator: Estimator) -> str:
    """A short readable name: ``Reparam``, ``Score``, ``Score(LeaveOneOut)``, ..."""
    name = type(estimator).__name__
    cv = getattr(estimator, "control_variate", None)
    if cv is None:
        return name
    update = getattr(cv, "update", None)
    qualname = getattr(update, "__qualname__", "")
    cv_name = qualname.split(".")[0] if "<locals>" in qualname else type(cv).__name__
    return f"{name}({cv_name})"


def default_candidates(
    fn: Any, num_particles: int = 1, expected_log_weight: bool = True
) -> list[Estimator]:
    """The estimators worth trying on a site whose guide distribution is ``fn``.

    The entries of :data:`vigrad.registry.ESTIMATORS` whose ``requires`` conditions hold, in the
    table's order:

    * Reparam where ``fn`` has a reparameterised sampler, and PathGradient too when the objective
      is an expectation of the log weight (the ELBO): inside multi-sample objectives such as
      IWELBO the plain path gradient is biased (use :class:`vigrad.DReG` there);
    * Enumerate where ``fn`` has a finite support, for the ELBO;
    * Score: with the ELBO and ``K > 1`` particles as ``Score(LeaveOneOut())`` (which is what
      ``Score()`` means then), otherwise ``Score()`` with the objective's own default baseline;
    * Score with a moving-average baseline.

    Args:
        fn: the site's guide distribution.
        num_particles: particles per estimate ``K``.
        expected_log_weight: whether the objective is an expectation of the log weight
            (``Objective.linear_in_log_weights``, true for :class:`vigrad.ELBO`).
    """
    return [
        entry.build()
        for entry in ESTIMATORS.values()
        if is_candidate(entry, fn, num_particles, expected_log_weight)
    ]


def guide_sites(
    guide: Callable, params: Mapping[str, Any], args: tuple, kwargs: dict
) -> dict[str, dict]:
    """The guide's sampled latent sites (not observed, not point masses), traced abstractly."""
    return trace_program(guide, args, kwargs, params=params, abstract=True).sampled


def site_parameters(
    guide: Callable, params: Mapping[str, Any], args: tuple, kwargs: dict
) -> dict[str, frozenset[str]]:
    """For each guide site, the parameters its distribution depends on directly.

    Found by provenance tracking with every sampled value held at a constant, so a site's
    parameters are those that enter its own distribution, not those of the sites it is
    conditioned on. Sites missing from the result (every site, if the analysis cannot trace
    the guide) are measured on all parameters.
    """
    params = {k: jax.numpy.asarray(v) for k, v in params.items()}
    latent = values(trace_program(guide, args, kwargs, params=params).latent)

    def fn_leaves(**p):
        sites = trace_program(guide, args, kwargs, params=p, data=latent).latent
        return {n: jax.tree.leaves(s["fn"]) for n, s in sites.items()}

    try:
        prov = eval_provenance(fn_leaves, **params)
    except Exception:  # noqa: BLE001 (a guide the analysis cannot trace: measure every parameter)
        return {}
    return {
        n: frozenset().union(*leaves) & frozenset(params) if leaves else frozenset()
        for n, leaves in prov.items()
    }


@dataclasses.dataclass
class Row:
    """One candidate estimator on one site.

    Attributes:
        site: guide site name.
        estimator: the candidate.
        name: its readable name.
        usable: whether it can serve the site.
        reason: why not (when not usable).
        failed: the measurement raised an unexpected error (``reason`` holds it), rather than
            the estimator declining the site.
        variance: trace of the covariance of one estimate of the gradient of the site's own
            parameters (``parameters``).
        snr: ``||mean|| / sqrt(variance)`` over the same parameters.
        total_variance: the same trace over every parameter.
        seconds: median wall time of one jitted estimate (``None`` if not measured).
        parameters: the parameters the site's guide distribution depends on.
        stats: the full measurement.
    """

    site: str
    estimator: Estimator
    name: str
    usable: bool
    reason: str | None = None
    failed: bool = False
    variance: float = math.nan
    snr: float = math.nan
    total_variance: float = math.nan
    seconds: float | None = None
    parameters: tuple[str, ...] = ()
    stats: GradientStats | None = None

    @property
    def efficiency_cost(self) -> float:
        """``variance x seconds``; ``inf`` if the candidate cannot serve the site."""
        if not self.usable or not math.isfinite(self.variance):
            return math.inf
        return self.variance * (self.seconds if self.seconds is not None else 1.0)


def _clip(text: str, width: int = 72) -> str:
    return text if len(text) <= width else text[: width - 3].rstrip() + "..."


def _fmt(x: float | None, spec: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec)


@dataclasses.dataclass
class Comparison:
    """Per-site comparison of candidate estimators; ``str()`` renders it as a text table."""

    rows: list[Row]
    num_samples: int
    num_particles: int
    objective: str

    @property
    def sites(self) -> list[str]:
        return list(dict.fromkeys(r.site for r in self.rows))

    def for_site(self, site: str) -> list[Row]:
        return [r for r in self.rows if r.site == site]

    def best(self, site: str) -> Row | None:
        """The usable row of ``site`` with the lowest ``variance x seconds``, or ``None``."""
        usable = [r for r in self.for_site(site) if r.usable and math.isfinite(r.efficiency_cost)]
        return min(usable, key=lambda r: (r.efficiency_cost, r.seconds or 0.0), default=None)

    def select(self) -> Selection:
        """Per site, the usable candidate with the lowest variance x cost, with the reasons."""
        chosen: dict[str, Estimator] = {}
        lines = [
            f"Estimators chosen by measured variance x cost ({self.objective}, "
            f"{self.num_particles} particle(s), {self.num_samples} estimates per candidate):"
        ]
        for site in self.sites:
            best = self.best(site)
            if best is not None:
                chosen[site] = best.estimator
            lines += _explain(site, self.for_site(site), best)
        return Selection(chosen, "\n".join(lines), self)

    def __str__(self) -> str:
        head = (
            f"Gradient estimators per site ({self.objective}, {self.num_particles} particle(s) per "
            f"estimate, {self.num_samples} estimates each; other sites unchanged).\n"
            "variance: trace of the covariance of the gradient of the site's own parameters; "
            "SNR: ||mean|| / sqrt(variance);\nms: wall time per estimate; var x ms: lower is "
            "better (* marks the lowest)."
        )
        widths = (
            max([4] + [len(s) for s in self.sites]) + 2,
            max([9] + [len(r.name) for r in self.rows]) + 2,
        )
        header = (
            f"{'site':<{widths[0]}}{'estimator':<{widths[1]}}{'variance':>11}{'SNR':>9}"
            f"{'ms':>9}{'var x ms':>11}  "
        )
        lines = [head, "", header, "-" * len(header)]
        for site in self.sites:
            best = self.best(site)
            for i, r in enumerate(self.for_site(site)):
                label = site if i == 0 else ""
                mark = "*" if r is best else " "
                if r.usable:
                    ms = None if r.seconds is None else r.seconds * 1e3
                    cost = r.efficiency_cost * (1e3 if r.seconds is not None else 1.0)
                    cells = (
                        f"{_fmt(r.variance, '.3g'):>11}{_fmt(r.snr, '.3g'):>9}"
                        f"{_fmt(ms, '.3g'):>9}{_fmt(cost, '.3g'):>11} {mark}"
                    )
                elif r.failed:
                    cells = f"  error: {_clip(r.reason or '')}"
                else:
                    reason = (r.reason or "").split(". ")[0].split(": ", 1)[-1]
                    cells = f"  cannot serve: {_clip(reason)}"
                lines.append(f"{label:<{widths[0]}}{r.name:<{widths[1]}}{cells}".rstrip())
        return "\n".join(lines)


def _usable_stats(stats: GradientStats, params: Sequence[str]) -> tuple[float, float, float]:
    names = [n for n in params if n in stats.mean] or list(stats.mean)
    return stats.total_variance(names), stats.total_snr(names), stats.total_variance()


def compare_estimators(
    model: Callable,
    guide: Callable,
    params: Mapping[str, Any],
    *args: Any,
    candidates: Mapping[str, Sequence[Estimator]] | None = None,
    estimators: Mapping[str, Estimator] | None = None,
    num_particles: int = 1,
    num_samples: int = 256,
    rng_key: jax.Array | None = None,
    objective: Any = None,
    unconstrained: bool = True,
    warmup: int = 100,
    timing_rounds: int = 5,
    **kwargs: Any,
) -> Comparison:
    """Measure each candidate estimator on each guide site, the other sites unchanged.

    Args:
        model, guide: NumPyro programs; ``*args`` and ``**kwargs`` are passed to both.
        params: constrained parameter values at which to measure (e.g. a fit's ``params``).
        candidates: site name -> estimators to try; only the sites named are compared. ``None``
            compares every sampled guide site with :func:`default_candidates`. Every candidate
            must be unbiased for the objective: the comparison measures variance, not bias. A
            site whose estimator the guide sets (``infer={"estimator": ...}``, which wins over
            any mapping), or whose objective draws every site one way (``RWS(wake="score")``),
            is measured with that estimator only. Keyword-only, as in
            :func:`select_estimators`: the arguments after ``params`` go to the model.
        estimators: the estimators of the other sites while one site is varied (default: the
            objective's assignment, by default Reparam where reparameterisable, else Score).
        num_particles, num_samples, rng_key, objective, unconstrained, warmup: as
            for :func:`~vigrad.diagnostics.gradients.gradient_variance`; every candidate uses the
            same keys.
        timing_rounds: after measuring, the candidates' compiled estimates are timed again in
            this many interleaved rounds (20 calls each) and ``seconds`` is the median over
            rounds, so a load that comes and goes on the machine falls on all candidates alike.

    Returns:
        A :class:`Comparison`; ``print`` it for a table,
        :func:`~vigrad.diagnostics.plots.plot_comparison` draws it.
    """
    _refuse_positional_candidates("compare_estimators", args)
    rng_key = jax.random.key(0) if rng_key is None else rng_key
    obj = make_objective(objective, num_particles, estimators)
    k = int(obj.num_particles)
    sites = guide_sites(guide, params, args, kwargs)
    if candidates is not None:
        unknown = sorted(set(candidates) - set(sites))
        if unknown:
            raise VigradError(
                f"compare_estimators(): {unknown} are not sampled sites of the guide; "
                f"its sampled sites are {sorted(sites)}"
            )
    own = site_parameters(guide, params, args, kwargs)
    base = dict(estimators or {})
    rows = []
    for site, msg in sites.items():
        if candidates is not None and site not in candidates:
            continue
        fn = msg["fn"]
        if candidates is not None:
            tried = list(candidates[site])
        else:
            tried = default_candidates(fn, k, bool(getattr(obj, "linear_in_log_weights", False)))
        fixed, where = (msg.get("infer") or {}).get("estimator"), "set in guide"
        if fixed is None and getattr(obj, "fixed_estimator", None) is not None:
            fixed, where = obj.fixed_estimator, f"set by {obj.name}"
        if fixed is not None:
            # The guide's own choice wins over any mapping, and an objective that draws every
            # site one way ignores both: that estimator is the only one to measure.
            tried = [fixed]
        site_params = tuple(sorted(own.get(site, frozenset())))
        for est in tried:
            name = estimator_name(est) + (f" ({where})" if fixed is not None else "")
            row = Row(site, est, name, usable=False, parameters=site_params)
            rows.append(row)
            try:
                est.check(site, fn)
                stats = gradient_variance(
                    model,
                    guide,
                    params,
                    {**base, site: est},
                    *args,
                    num_particles=num_particles,
                    num_samples=num_samples,
                    rng_key=rng_key,
                    objective=objective,
                    unconstrained=unconstrained,
                    warmup=warmup,
                    **kwargs,
                )
            except VigradError as err:
                row.reason = str(err)
                continue
            except Exception as err:  # noqa: BLE001 (one failing candidate must not hide the rest)
                row.reason = f"{type(err).__name__}: {err}".split("\n")[0]
                row.failed = True
                continue
            variance, snr, total = _usable_stats(stats, site_params)
            row.usable = math.isfinite(variance)
            if not row.usable:
                row.reason = "the gradient estimates are not finite at these parameters"
            row.variance, row.snr, row.total_variance = variance, snr, total
            row.seconds, row.stats = stats.seconds, stats
    _interleaved_timings([r for r in rows if r.usable], timing_rounds)
    return Comparison(rows, int(num_samples), k, type(obj).__name__)


def _interleaved_timings(rows: list[Row], rounds: int) -> None:
    if rounds < 1:
        return
    timings: dict[int, list[float]] = {id(r): [] for r in rows}
    for _ in range(rounds):
        for r in rows:
            timings[id(r)].append(r.stats.timer(20))
    for r in rows:
        r.seconds = statistics.median(timings[id(r)])


@dataclasses.dataclass
class Selection:
    """What :func:`select_estimators` chose, and why.

    Unpacks as ``estimators, report = select_estimators(...)``.

    Attributes:
        estimators: site name -> chosen estimator, ready for ``vigrad.ELBO(estimators=...)``.
        report: a human-readable account of the choice per site.
        comparison: the measurements behind it.
    """

    estimators: dict[str, Estimator]
    report: str
    comparison: Comparison

    def __iter__(self):
        return iter((self.estimators, self.report))

    def __str__(self) -> str:
        return self.report


def _explain(site: str, rows: list[Row], best: Row | None) -> list[str]:
    if best is None:
        lines = [f"{site}: no candidate can serve this site; keeping the objective's default."]
    else:
        why = (
            f"variance {best.variance:.3g} x {best.seconds * 1e3:.3g} ms per estimate"
            if best.seconds is not None
            else f"variance {best.variance:.3g}"
        )
        lines = [f"{site}: {best.name}, the lowest variance x cost ({why})."]
    for r in rows:
        if r is best:
            continue
        if not r.usable:
            what = "failed to measure" if r.failed else "cannot serve it"
            lines.append(f"  {r.name}: {what} ({r.reason})")
            continue
        if best is None:
            continue
        ratio = r.efficiency_cost / best.efficiency_cost if best.efficiency_cost > 0 else math.inf
        var_ratio = r.variance / best.variance if best.variance > 0 else math.inf
        detail = f"variance {r.variance:.3g}"
        if r.seconds is not None and best.seconds is not None:
            detail += f", {r.seconds / best.seconds:.2g}x the time"
        lines.append(
            f"  {r.name}: {_ratio(ratio)} the variance x cost of {best.name} ({detail}; "
            f"{_ratio(var_ratio)} the variance)"
        )
    return lines


def _ratio(x: float) -> str:
    if not math.isfinite(x):
        return "infinitely many times"
    if x >= 1e4:
        return f"{x:.1e}x"
    return f"{x:.3g}x"


def select_estimators(
    model: Callable,
    guide: Callable,
    params: Mapping[str, Any],
    *args: Any,
    candidates: Mapping[str, Sequence[Estimator]] | None = None,
    **kwargs: Any,
) -> Selection:
    """Pick, per guide site, the estimator with the lowest measured ``variance x cost``.

    Runs :func:`compare_estimators` (same arguments; model arguments follow ``params``) and keeps,
    per site, the usable candidate minimising variance x seconds; estimators that cannot serve a
    site are never chosen. The choice holds at ``params``: variances change as the guide moves
    (path gradients become exact at the posterior), so measure where the fit spends its time,
    e.g. after a short warm-up fit.

    Returns:
        A :class:`Selection` (``estimators, report = select_estimators(...)``).

    Example::

        choice = vigrad.select_estimators(model, guide, result.params, x)
        print(choice.report)
        objective = vigrad.ELBO(estimators=choice.estimators)
    """
    _refuse_positional_candidates("select_estimators", args)
    comparison = compare_estimators(model, guide, params, *args, candidates=candidates, **kwargs)
    return comparison.select()


def _refuse_positional_candidates(where: str, args: tuple) -> None:
    """Model arguments follow ``params``; a candidates mapping among them was meant as the
    keyword (it used to be positional in ``compare_estimators``)."""
    first = args[0] if args else None
    if isinstance(first, Mapping) and first:
        given = [e for v in first.values() for e in (v if isinstance(v, Sequence) else [v])]
        if given and all(isinstance(e, Estimator) for e in given):
            raise TypeError(
                f"{where}(): candidates is keyword-only (the arguments after params go to the "
                f"model and guide); pass it as {where}(model, guide, params, *args, "
                "candidates={...})."
            )
