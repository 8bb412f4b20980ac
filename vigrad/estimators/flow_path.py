"""The fast path gradient for normalizing-flow guide sites (Vaitl, Winkler, Richter & Kessel,
"Fast and unified path gradient estimators for normalizing flows", ICLR 2024).

Same estimator as :class:`~vigrad.PathGradient` (sticking the landing): the sample is pathwise and
``log q`` has its parameters stopped. For a flow the score ``grad_x log q(x)`` is carried forward
with the sample (:mod:`vigrad.flows.score`), and the site's ``log q`` term is

    log_q = stop(log q(x)) + <stop(grad_x log q(x)), x - stop(x)>,

whose value is ``log q(x)`` and whose parameter gradient through ``x`` is exactly that of
``log q_{stop(params)}(x(params))``, without the inverse pass that the generic path gradient needs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from vigrad.errors import EstimatorError
from vigrad.estimators.path import PathGradient


@dataclasses.dataclass(frozen=True)
class FlowPathGradient(PathGradient):
    """Path gradient with the forward score recursion, for sites drawn from a flow guide
    (:class:`vigrad.flows.FlowDistribution`, as made by ``flow_sample`` and ``AutoFlow``).

    :class:`~vigrad.PathGradient` already takes the fast route on flow sites; this estimator also
    insists on it, raising an error on a site that is not a flow.
    """

    def check(self, site_name: str, fn: Any) -> None:
        if not hasattr(fn, "path_draw"):
            raise EstimatorError(
                f"FlowPathGradient() cannot serve site '{site_name}': {type(fn).__name__} is not "
                "a flow guide distribution. Draw the site with vigrad.flows.flow_sample (or use "
                "vigrad.flows.AutoFlow), or use vigrad.PathGradient() for other distributions."
            )
