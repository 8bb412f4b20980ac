"""The names of estimators, objectives and SG-MCMC kernels: one table per concept.

Each table maps a short name (as typed on the command line, in ``vigrad.nn`` layers or in a
configuration file) to an :class:`Entry`: where the constructor lives, as a dotted path imported
only when the entry is built (so reading a table starts neither JAX nor NumPyro), the arguments it
is built with, and one line saying what it is. The command line, :mod:`vigrad.nn` and
:func:`vigrad.diagnostics.select.default_candidates` read these tables, so a new estimator or
objective is its own file plus one line here (docs/contributing.md shows both).

The tables are immutable: a user's own estimator is passed as an instance, not registered.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

from vigrad.errors import VigradError


@dataclasses.dataclass(frozen=True)
class Entry:
    """One named constructor.

    Attributes:
        name: the short name.
        target: ``"module:attribute"`` of the class or function to call.
        description: one line for listings and error messages.
        args: positional arguments; an :class:`Entry` among them is built first (e.g. a control
            variate for :class:`~vigrad.Score`).
        options: keyword arguments the caller may add when building (e.g. ``alpha`` for the
            Renyi bound), besides those every entry of the table takes.
        requires: for estimators, what a site and objective need for it to be a default candidate
            of :func:`~vigrad.diagnostics.select.default_candidates` (names of
            :data:`CANDIDATE_CONDITIONS`); ``None`` keeps it out of the default candidates.
    """

    name: str
    target: str
    description: str
    args: tuple[Any, ...] = ()
    options: tuple[str, ...] = ()
    requires: tuple[str, ...] | None = None

    def load(self) -> Callable[..., Any]:
        """The class or function named by ``target`` (imported now)."""
        module, _, attribute = self.target.partition(":")
        return getattr(importlib.import_module(module), attribute)

    def build(self, **kwargs: Any) -> Any:
        """Call the target with the entry's arguments and ``kwargs``."""
        args = [a.build() if isinstance(a, Entry) else a for a in self.args]
        return self.load()(*args, **kwargs)


class Registry(Mapping[str, Entry]):
    """An immutable table of :class:`Entry` by name, with aliases kept for older vocabularies."""

    def __init__(
        self, concept: str, entries: Iterable[Entry], aliases: Mapping[str, str] | None = None
    ):
        self.concept = concept
        table = {e.name: e for e in entries}
        aliases = dict(aliases or {})
        unknown = sorted(set(aliases.values()) - set(table))
        if unknown:
            raise ValueError(f"{concept} aliases point to unknown names {unknown}")
        self._entries = MappingProxyType(table)
        self._aliases = MappingProxyType(aliases)

    def __getitem__(self, name: str) -> Entry:
        return self._entries[self._aliases.get(name, name)]

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def aliases(self) -> Mapping[str, str]:
        """Older names still accepted, each with the name it stands for."""
        return self._aliases

    def entry(self, name: str) -> Entry:
        """The entry named ``name`` (or an alias of it); a clear error listing the names if none."""
        if name not in self:
            raise VigradError(
                f"Unknown {self.concept} '{name}'. Choose one of: {self.describe('; ')}."
            )
        return self[name]

    def build(self, name: str, **kwargs: Any) -> Any:
        """Build the entry named ``name`` with ``kwargs``."""
        return self.entry(name).build(**kwargs)

    def describe(self, separator: str = "\n") -> str:
        """``name = description`` for every entry, joined by ``separator``."""
        return separator.join(f"{e.name} = {e.description}" for e in self._entries.values())


CANDIDATE_CONDITIONS: Mapping[str, Callable[[Any, int, bool], bool]] = MappingProxyType(
    {
        # The site's distribution has a reparameterised sampler.
        "rsample": lambda fn, k, expectation: bool(getattr(fn, "has_rsample", False)),
        # The site's distribution has a finite support to enumerate.
        "finite-support": lambda fn, k, expectation: bool(
            getattr(fn, "has_enumerate_support", False)
        ),
        # The objective is an expectation of the log weight (the ELBO).
        "expected-log-weight": lambda fn, k, expectation: expectation,
        # An expectation of the log weight over K >= 2 particles (leave-one-out applies).
        "several-particles": lambda fn, k, expectation: expectation and k > 1,
        "not-several-particles": lambda fn, k, expectation: not (expectation and k > 1),
    }
)
"""What :attr:`Entry.requires` may name: ``condition(fn, num_particles, expected_log_weight)``."""


def is_candidate(entry: Entry, fn: Any, num_particles: int, expected_log_weight: bool) -> bool:
    """Whether ``entry`` is a default candidate for a site with guide distribution ``fn``."""
    if entry.requires is None:
        return False
    return all(
        CANDIDATE_CONDITIONS[c](fn, num_particles, expected_log_weight) for c in entry.requires
    )


CONTROL_VARIATES = Registry(
    "control variate",
    [
        Entry(
            "none",
            "vigrad.estimators.control_variates:no_baseline",
            "no baseline (plain REINFORCE)",
        ),
        Entry(
            "loo",
            "vigrad.estimators.control_variates:LeaveOneOut",
            "leave-one-out baseline over the K particles",
        ),
        Entry(
            "ma",
            "vigrad.estimators.control_variates:MovingAverage",
            "moving average of past signals",
            args=(0.9,),
        ),
    ],
)
"""Baselines of score-function estimators (``Score(<control variate>)``)."""

ESTIMATORS = Registry(
    "estimator",
    [
        Entry(
            "reparam",
            "vigrad.estimators.reparam:Reparam",
            "vigrad.Reparam()",
            requires=("rsample",),
        ),
        Entry(
            "path",
            "vigrad.estimators.path:PathGradient",
            "vigrad.PathGradient() (sticking the landing)",
            requires=("rsample", "expected-log-weight"),
        ),
        Entry(
            "enumerate",
            "vigrad.estimators.enum:Enumerate",
            "vigrad.Enumerate() (exact sum, ELBO only)",
            requires=("finite-support", "expected-log-weight"),
        ),
        Entry(
            "score",
            "vigrad.estimators.score:Score",
            "vigrad.Score() (REINFORCE, Rao-Blackwellised)",
            requires=("not-several-particles",),
        ),
        Entry(
            "score-loo",
            "vigrad.estimators.score:Score",
            "vigrad.Score(vigrad.LeaveOneOut())",
            args=(CONTROL_VARIATES["loo"],),
            requires=("several-particles",),
        ),
        Entry(
            "score-ma",
            "vigrad.estimators.score:Score",
            "vigrad.Score(vigrad.MovingAverage(0.9))",
            args=(CONTROL_VARIATES["ma"],),
            requires=(),
        ),
        Entry("mvd", "vigrad.estimators.mvd:MVD", "vigrad.MVD() (measure-valued derivative)"),
        Entry(
            "r2g2",
            "vigrad.estimators.r2g2:R2G2",
            "vigrad.R2G2() (Rao-Blackwellised reparameterisation; needs a vigrad.nn map)",
        ),
        Entry(
            "lrt",
            "vigrad.estimators.r2g2:LocalReparam",
            "vigrad.LocalReparam() (local reparameterisation trick; dense vigrad.nn maps)",
        ),
        Entry(
            "flow-path",
            "vigrad.estimators.flow_path:FlowPathGradient",
            "vigrad.FlowPathGradient() (path gradient of a vigrad.flows guide)",
        ),
    ],
    aliases={"rt": "reparam", "local-reparam": "lrt"},
)
"""Per-site gradient estimators; ``build(name)`` takes no arguments. Entries with ``requires`` are
tried by :func:`~vigrad.diagnostics.select.default_candidates` where the conditions hold."""

OBJECTIVES = Registry(
    "objective",
    [
        Entry("elbo", "vigrad.objectives.elbo:ELBO", "vigrad.ELBO", options=("analytic_kl",)),
        Entry("iwelbo", "vigrad.objectives.iwelbo:IWELBO", "vigrad.IWELBO (importance weighted)"),
        Entry("vimco", "vigrad.objectives.iwelbo:VIMCO", "vigrad.VIMCO (IWELBO, VIMCO baselines)"),
        Entry("renyi", "vigrad.objectives.renyi:RenyiELBO", "vigrad.RenyiELBO", options=("alpha",)),
        Entry(
            "dreg",
            "vigrad.objectives.dreg:DReG",
            "vigrad.DReG (doubly reparameterised IWELBO)",
            options=("alpha",),
        ),
        Entry(
            "rws",
            "vigrad.objectives.rws:RWS",
            "vigrad.RWS (reweighted wake-sleep)",
            options=("wake",),
        ),
        Entry(
            "iwhvi",
            "vigrad.objectives.hvi:IWHVI",
            "vigrad.IWHVI (hierarchical guide, with_reverse model)",
            options=("num_inner",),
        ),
        Entry(
            "diwhvi",
            "vigrad.objectives.hvi:DIWHVI",
            "vigrad.DIWHVI (doubly importance-weighted hierarchical guide)",
            options=("num_inner",),
        ),
    ],
)
"""Variational objectives; every entry is built with ``num_particles=`` and ``estimators=``, plus
its ``options``."""

KERNELS = Registry(
    "SG-MCMC kernel",
    [
        Entry("sgld", "vigrad.sgmcmc:SGLD", "vigrad.sgmcmc.SGLD (Langevin dynamics)"),
        Entry("psgld", "vigrad.sgmcmc:pSGLD", "vigrad.sgmcmc.pSGLD (RMSprop-preconditioned)"),
        Entry("sghmc", "vigrad.sgmcmc:SGHMC", "vigrad.sgmcmc.SGHMC (Hamiltonian, friction)"),
        Entry("sgldcv", "vigrad.sgmcmc:SGLDCV", "vigrad.sgmcmc.SGLDCV (control variates)"),
        Entry(
            "sgldcv-pre",
            "vigrad.sgmcmc:PreconditionedSGLDCV",
            "vigrad.sgmcmc.PreconditionedSGLDCV (control variates, preconditioned)",
        ),
    ],
)
"""Stochastic-gradient MCMC kernels, each built with ``step_size=``; loaded by dotted name from
:mod:`vigrad.sgmcmc`, so the table holds whatever classes that package exports under these names."""
