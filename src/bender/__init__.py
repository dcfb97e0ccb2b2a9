"""bender: neural networks trained with a bent chain rule, on PyTorch.

Feedback alignment, direct feedback alignment, binary networks with straight-through
estimators, RBF-style layers, and any rule in which the backward pass is not the exact gradient.
"""

from bender import (
    alignment,
    constraints,
    functional,
    mappings,
    mirrors,
    models,
    quantizers,
    rules,
    summary,
)
from bender.attention import GenAttention
from bender.conversion import convert
from bender.dfa import DFA
from bender.functional.direct_feedback import direct_feedback_loss
from bender.layers import GenConv, GenDense
from bender.mappings import register_mapping
from bender.nonlinearities import HardSigmoid, HardtanhAdaSTE, SignSTE, StocSignSTE
from bender.rules import apply_rule
from bender.tracing import activations

__version__ = "0.1.0"

__all__ = [
    "DFA",
    "GenAttention",
    "GenConv",
    "GenDense",
    "HardSigmoid",
    "HardtanhAdaSTE",
    "SignSTE",
    "StocSignSTE",
    "activations",
    "alignment",
    "apply_rule",
    "constraints",
    "convert",
    "direct_feedback_loss",
    "functional",
    "mappings",
    "mirrors",
    "models",
    "quantizers",
    "register_mapping",
    "rules",
    "summary",
]
