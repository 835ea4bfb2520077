"""conv2d (plain, grouped, depthwise), NCHW/OIHW, with a constant weight.

Integer form, per output channel c (weights symmetric, zero point 0):
    acc[c] = conv(pad(x_q, value=x_zp), w_q)[c] + bias_q[c]
    bias_q[c] = round(bias[c] / (s_x * s_w[c])) - x_zp * sum(w_q[c])
Padding with the input zero point and folding x_zp * sum(w_q) into the bias makes
the zero-point correction exact. The accumulator is int32 for 8-bit operands and
int64 for 16-bit ones, then requantized per channel; a fused ReLU/clip is the clamp.
"""

from __future__ import annotations

import numpy as np

from .. import fixed_point
from ..weights import fold_bias, layer_weight
from ..layer import Layer, QTensor
from . import Rule, register
from ._fuse import absorb_activation, absorb_bias


@register("relax.nn.conv2d")
class Conv2dRule(Rule):
    float_output = True

    def match(self, binding, graph):
        call = binding.value
        weight = graph.const(call.args[1])
        attrs = call.attrs
        if weight is None or not graph.is_tensor_var(call.args[0]) or weight.ndim != 4:
            return None
        if attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW" or attrs.out_layout != "NCHW":
            return None
        layer = Layer.single(binding, self, graph, inputs=[call.args[0]])
        layer.weight = weight.astype(np.float32)
        absorb_bias(layer, graph, weight.shape[0], axis=1, ndim=4)
        absorb_activation(layer, graph)
        return layer

    def realize(self, layer, rz):
        from tvm import relax

        attrs = layer.call.attrs
        a_dtype, w_dtype = rz.act_dtype(layer), rz.weight_dtype(layer)
        x = rz.qin(layer.inputs[0], a_dtype)
        w_scale, w_q, bias = layer_weight(layer, rz, axis=0, dtype=w_dtype)
        acc_dtype = "int32" if w_dtype == "int8" else "int64"

        data, padding = x.expr, [int(p) for p in attrs.padding]
        if x.zp != 0 and any(padding):
            top, left, bottom, right = padding
            data = rz.emit(relax.op.nn.pad(data, [0, 0, 0, 0, top, bottom, left, right], pad_value=float(x.zp)), "padded")
            padding = [0, 0, 0, 0]
        acc = rz.emit(relax.op.nn.conv2d(data, rz.const(w_q, w_dtype), strides=attrs.strides, padding=padding,
                                         dilation=attrs.dilation, groups=int(attrs.groups), out_dtype=acc_dtype), "conv")
        acc_scale = x.scale * w_scale.astype(np.float64)
        bias_q = fold_bias(bias, acc_scale, x.zp, w_q.reshape(w_q.shape[0], -1).sum(axis=1))
        acc = rz.emit(relax.op.add(acc, rz.const(bias_q.reshape(1, -1, 1, 1), acc_dtype)), "biased")
        if layer.attrs.get("float_out"):
            return rz.dequantize_acc(acc, acc_scale, layer, axis=1, ndim=4)

        k = int(np.prod(w_q.shape[1:]))
        out_scale, out_zp = rz.qparams(layer.out, a_dtype)
        bound = fixed_point.acc_bound(k, a_dtype, w_dtype, x.zp, 0) + int(np.abs(bias_q).max(initial=0))
        out = rz.requantize(acc, acc_scale, out_scale, out_zp, a_dtype, axis=1, clip=layer.clip,
                            acc_bound=bound if acc_dtype == "int64" else None)
        return QTensor(out, out_scale, out_zp, a_dtype)
