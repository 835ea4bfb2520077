"""Data-movement ops run on integer codes unchanged: reshape, flatten, transpose,
squeeze, expand_dims, and constant pad (padding value -> its code).
They stay integer only when their input already is."""

from __future__ import annotations

from ..layer import Layer, QTensor
from . import Rule, register


@register("relax.reshape", "relax.permute_dims", "relax.squeeze", "relax.expand_dims",
          "relax.flatten", "relax.strided_slice", "relax.take", "relax.split")
class DataMovementRule(Rule):
    kind = "exact"

    def match(self, binding, graph):
        if not graph.is_tensor_var(binding.value.args[0]):
            return None
        if str(binding.value.op.name) == "relax.split":
            return None  # returns a tuple: kept fp32 for now
        return Layer.single(binding, self, graph, inputs=[binding.value.args[0]])

    def realize(self, layer, rz):
        from tvm import relax

        q = rz.integer(layer.inputs[0])
        if q is None:
            return None
        call = layer.call
        out = rz.emit(relax.Call(call.op, [q.expr] + list(call.args[1:]), call.attrs, call.ty_args), "moved")
        return QTensor(out, q.scale, q.zp, q.dtype)


@register("relax.nn.pad")
class PadRule(DataMovementRule):
    def realize(self, layer, rz):
        from tvm import relax

        q = rz.integer(layer.inputs[0])
        attrs = layer.call.attrs
        if q is None or attrs.pad_mode != "constant":
            return None
        value = float(attrs.pad_value) if attrs.pad_value is not None else 0.0
        code = q.zp + round(value / q.scale)
        from .. import fixed_point

        qmin, qmax = fixed_point.qrange(q.dtype)
        if not qmin <= code <= qmax:
            return None
        out = rz.emit(relax.op.nn.pad(q.expr, [int(p) for p in attrs.pad_width], pad_value=float(code)), "padded")
        return QTensor(out, q.scale, q.zp, q.dtype)
