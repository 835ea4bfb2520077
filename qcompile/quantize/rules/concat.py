"""concat: every input is brought to the output's scale and zero point (a pure
copy when they already match), then the codes are concatenated."""

from __future__ import annotations

from ..layer import Layer, QTensor
from . import Rule, register


@register("relax.concat")
class ConcatRule(Rule):
    def match(self, binding, graph):
        from tvm import relax

        tup = binding.value.args[0]
        if not isinstance(tup, relax.Tuple) or not all(graph.is_tensor_var(f) for f in tup.fields):
            return None
        return Layer.single(binding, self, graph, inputs=list(tup.fields))

    def realize(self, layer, rz):
        from tvm import relax

        dtype = rz.act_dtype(layer)
        out_scale, out_zp = rz.qparams(layer.out, dtype)
        parts = []
        for v in layer.inputs:
            q = rz.integer(v)
            if q is None:
                scale, zp = out_scale, out_zp
                expr = relax.op.quantize(rz.float_of(v), relax.const(scale, "float32"), relax.const(zp, "int32"),
                                         axis=-1, out_dtype=dtype)
                parts.append(rz.emit(expr, "q_in"))
            else:
                parts.append(rz.requantize_codes(q, out_scale, out_zp, dtype))
        out = rz.emit(relax.op.concat(parts, axis=int(layer.call.attrs.axis)), "concat")
        return QTensor(out, out_scale, out_zp, dtype)
