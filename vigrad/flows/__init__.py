"""Normalizing-flow guides (on flowjax bijections) with fast path gradients."""

from vigrad.estimators.flow_path import FlowPathGradient
from vigrad.flows.distribution import (
    AutoFlow,
    FlowDistribution,
    default_flow,
    flow_param,
    flow_sample,
)
from vigrad.flows.forward_kl import forward_kl_path_loss
from vigrad.flows.reverse_kl import reverse_kl_path_loss
from vigrad.flows.score import (
    local_inverse_rule,
    push_forward,
    register_score_rule,
    sample_and_score,
    slow_score,
    transform_and_score,
)

__all__ = [
    "AutoFlow",
    "FlowDistribution",
    "FlowPathGradient",
    "default_flow",
    "flow_param",
    "flow_sample",
    "forward_kl_path_loss",
    "local_inverse_rule",
    "push_forward",
    "register_score_rule",
    "reverse_kl_path_loss",
    "sample_and_score",
    "slow_score",
    "transform_and_score",
]
