"""A per-channel scale and shift, ``x * s[c] (+ t[c])`` on NCHW, with constants along the channels.

FoldBatchNorm (qcompile/transform) folds every BatchNormalization it can into the conv or matmul before
it; one with nothing to fold into (DenseNet's pre-activation ``concat -> BN -> ReLU -> conv``) stays as
this multiply and add. In integers (reference.scale_shift):
    acc[c] = sign(s[c]) * (q - zp) * 2**16 + rint(t[c] / unit[c]),  unit[c] = s_x * |s[c]| / 2**16
requantized per channel from ``unit`` to the output scale; a following ReLU/clip is the clamp.
"""

from __future__ import annotations

import numpy as np

from ..layer import Layer, QTensor
from ..reference import scale_shift_parts
from . import Rule, register_pattern
from ._fuse import _is_op, absorb_activation


@register_pattern("relax.multiply")
class ScaleShiftRule(Rule):
    needs_integer_reader = True  # a table / scale-shift read back in float gains nothing
    def match(self, binding, graph):
        x, scale = _channel_operand(binding.value, graph)
        if x is None:
            return None
        layer = Layer.single(binding, self, graph, inputs=[x])
        layer.op = "relax.scale_shift"
        layer.weight, layer.bias = scale, np.zeros_like(scale)
        nxt = graph.sole_user(binding.var)
        if nxt is not None and _is_op(nxt.value, "relax.add"):
            _, shift = _channel_operand(nxt.value, graph, x=binding.var)
            if shift is not None:
                layer.bias = shift
                layer.bindings.append(nxt)
        absorb_activation(layer, graph)
        return layer

    def realize(self, layer, rz):
        from tvm import relax

        dtype = rz.act_dtype(layer)
        q = rz.qin(layer.inputs[0], dtype)
        if np.any(layer.weight == 0):
            return None
        sign, bias, unit, bound = scale_shift_parts(q.scale, q.zp, layer.weight, layer.bias, dtype)
        acc = rz.emit(relax.op.subtract(relax.op.astype(q.expr, "int64"), rz.const(q.zp, "int64")), "centered")
        acc = rz.emit(relax.op.multiply(acc, rz.const(sign, "int64")), "signed")
        acc = rz.emit(relax.op.add(acc, rz.const(bias, "int64")), "shifted")
        out_scale, out_zp = rz.qparams(layer.out, dtype)
        out = rz.requantize(acc, unit, out_scale, out_zp, dtype, axis=1, clip=layer.clip, acc_bound=bound)
        return QTensor(out, out_scale, out_zp, dtype)


def _channel_operand(call, graph, x=None):
    """(tensor operand, float64 vector over the channels) of a binary op of an NCHW tensor (`x`, if given)
    and a constant that varies along the channels only, else (None, None)."""
    if len(call.args) != 2:
        return None, None
    for a, b in (call.args, call.args[::-1]):
        value = graph.const(b)
        if (a.same_as(x) if x is not None else graph.is_tensor_var(a)) and value is not None:
            break
    else:
        return None, None
    shape = getattr(getattr(a.ty, "shape", None), "values", None)
    if shape is None or len(shape) != 4 or value.dtype.kind != "f":
        return None, None
    channels = int(shape[1])
    if channels < 2 or value.size != channels or value.ndim > 4:
        return None, None
    if np.broadcast_shapes(value.shape, (1, channels, 1, 1)) != (1, channels, 1, 1):
        return None, None
    return a, value.reshape(-1).astype(np.float64)
