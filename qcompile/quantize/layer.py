"""The data types annotate, the rules and realize share: a planned Layer and a QTensor of integer codes.

annotate groups bindings into Layers through the rules; realize turns each Layer into integer code
and tracks every integer tensor as a QTensor. Both live here so that the rules, annotate and realize
import them from one place instead of from each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class QTensor:
    """Integer codes with their per-tensor quantization parameters."""

    expr: object
    scale: float
    zp: int
    dtype: str


@dataclass(eq=False)
class Layer:
    name: str
    rule: object
    op: str
    anchor: object              # the binding var of the anchor call
    call: object                # the anchor call
    bindings: list              # all absorbed bindings, anchor first
    inputs: list                # activation inputs (relax exprs, float tensors)
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    clip: tuple | None = None   # (lo, hi) float bounds of a fused ReLU/clip
    precision: str = "int8"
    attrs: dict = field(default_factory=dict)
    aliases: list = field(default_factory=list)  # source names (ONNX tensor / node) for keep_* patterns

    @property
    def out(self):
        return self.bindings[-1].var

    @staticmethod
    def single(binding, rule, graph, inputs=None):
        call = binding.value
        ins = inputs if inputs is not None else [a for a in call.args if graph.is_tensor_var(a)]
        return Layer(name="", rule=rule, op=call.op.name, anchor=binding.var, call=call,
                     bindings=[binding], inputs=ins)
