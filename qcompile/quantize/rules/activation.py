"""ReLU and clip on integer codes: exact, the scale and zero point pass through.

relu(q) = max(q, zp); clip(q) clamps to the codes of the float bounds. They run in
the integer domain only when their input already is integer (otherwise they stay
fp32, and a ReLU right after a conv/matmul/add is absorbed by that layer anyway).
"""

from __future__ import annotations

from ..layer import Layer, QTensor
from ..realize import clamp_bounds
from . import Rule, register
from ._fuse import prim_float


class _ExactUnary(Rule):
    kind = "exact"

    def match(self, binding, graph):
        if not graph.is_tensor_var(binding.value.args[0]):
            return None
        return Layer.single(binding, self, graph, inputs=[binding.value.args[0]])


@register("relax.nn.relu")
class ReluRule(_ExactUnary):
    def realize(self, layer, rz):
        return _clamped(layer, rz, (0.0, None))


@register("relax.clip")
class ClipRule(_ExactUnary):
    def realize(self, layer, rz):
        lo, hi = prim_float(layer.call.args[1]), prim_float(layer.call.args[2])
        if lo is None or hi is None:
            return None
        return _clamped(layer, rz, (lo, hi))


def _clamped(layer, rz, bounds):
    from tvm import relax

    q = rz.integer(layer.inputs[0])
    if q is None:
        return None
    lo, hi = clamp_bounds(q.scale, q.zp, q.dtype, bounds)
    out = rz.emit(relax.op.clip(q.expr, relax.prim_value(lo), relax.prim_value(hi)), "clamped")
    return QTensor(out, q.scale, q.zp, q.dtype)
