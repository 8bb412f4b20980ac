"""Choosing the estimator of each guide sample site (most specific wins).

1. ``infer={"estimator": ...}`` on the site in the guide;
2. a mapping from site name to estimator given to the objective;
3. a callable over the site (NumPyro's site dict, with ``site["name"]`` and ``site["fn"]``) given to
   the objective, returning an estimator or ``None`` (useful for autoguides);
4. the default: :class:`~vigrad.Reparam` where the distribution has a reparameterised sampler,
   :class:`~vigrad.Score` otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from vigrad.errors import EstimatorError
from vigrad.estimators.base import Estimator
from vigrad.estimators.reparam import Reparam
from vigrad.estimators.score import Score

EstimatorSpec = Mapping[str, Estimator] | Callable[[dict], Estimator | None] | None


def _require_estimator(obj: Any, where: str) -> Estimator:
    if not isinstance(obj, Estimator):
        raise EstimatorError(
            f"{where}: expected a vigrad estimator (vigrad.Reparam(), vigrad.PathGradient(), "
            f"vigrad.Score(), ...), got {obj!r} of type {type(obj).__name__}. "
            "Did you pass the class instead of an instance?"
        )
    return obj


def default_estimator(fn: Any) -> Estimator:
    return Reparam() if getattr(fn, "has_rsample", False) else Score()


class Assignment:
    """The estimator specification of one objective, resolved site by site."""

    def __init__(
        self, spec: EstimatorSpec = None, default: Callable[[Any], Estimator] | None = None
    ):
        self.default = default or default_estimator
        self.by_name: dict[str, Estimator] = {}
        self.by_site: Callable[[dict], Estimator | None] | None = None
        if spec is None:
            pass
        elif isinstance(spec, Mapping):
            for name, est in spec.items():
                self.by_name[name] = _require_estimator(est, f"estimators[{name!r}]")
        elif callable(spec):
            self.by_site = spec
        else:
            raise EstimatorError(
                "estimators must be a mapping from site name to estimator, a callable "
                f"site -> estimator or None, or None; got {type(spec).__name__}"
            )

    def resolve(self, site: dict) -> Estimator:
        name, fn, infer = site["name"], site["fn"], site.get("infer") or {}
        if "estimator" in infer:
            est = _require_estimator(infer["estimator"], f"site '{name}' infer['estimator']")
        elif name in self.by_name:
            est = self.by_name[name]
        else:
            est = None
            if self.by_site is not None:
                chosen = self.by_site(site)
                if chosen is not None:
                    est = _require_estimator(chosen, f"estimators callable for site '{name}'")
            if est is None:
                est = self.default(fn)
        est.check(name, fn)
        return est

    def check_names(self, sampled: set[str], deterministic: set[str]) -> None:
        """Every name in the mapping must be a sampled guide site."""
        for name in self.by_name:
            if name in sampled:
                continue
            if name in deterministic:
                raise EstimatorError(
                    f"An estimator was assigned to site '{name}', but in the guide '{name}' is a "
                    "point mass (Delta) computed from other guide sites, as autoguides such as "
                    "AutoDiagonalNormal do; assign the estimator to the sampled site instead: "
                    f"{sorted(sampled)}"
                )
            raise EstimatorError(
                f"An estimator was assigned to site '{name}', which is not a sample site of the "
                f"guide. Guide sample sites: {sorted(sampled)}"
            )
