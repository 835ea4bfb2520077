"""Pooling. max_pool2d is exact on codes (max commutes with a monotone affine map).
Average pooling and spatial mean (GlobalAveragePool) sum codes in int32 and
requantize: y = zp_out + rescale(sum(q) - n*zp_in, s_in / (n * s_out)).
"""

from __future__ import annotations

import numpy as np

from ..layer import Layer, QTensor
from . import Rule, register


@register("relax.nn.max_pool2d")
class MaxPoolRule(Rule):
    kind = "exact"

    def match(self, binding, graph):
        if not graph.is_tensor_var(binding.value.args[0]):
            return None
        return Layer.single(binding, self, graph, inputs=[binding.value.args[0]])

    def realize(self, layer, rz):
        from tvm import relax

        q = rz.integer(layer.inputs[0])
        if q is None:
            return None
        out = rz.emit(relax.Call(layer.call.op, [q.expr], layer.call.attrs), "maxpool")
        return QTensor(out, q.scale, q.zp, q.dtype)


@register("relax.mean")
class MeanRule(Rule):
    def match(self, binding, graph):
        if not graph.is_tensor_var(binding.value.args[0]) or binding.value.attrs.axis is None:
            return None
        return Layer.single(binding, self, graph, inputs=[binding.value.args[0]])

    def realize(self, layer, rz):
        from tvm import relax

        dtype = rz.act_dtype(layer)
        q = rz.qin(layer.inputs[0], dtype)
        shape = [int(d) for d in layer.inputs[0].ty.shape]
        axes = [int(a) % len(shape) for a in layer.call.attrs.axis]
        n = int(np.prod([shape[a] for a in axes]))
        total = rz.emit(relax.op.sum(relax.op.astype(q.expr, "int64"), axis=axes,
                                     keepdims=bool(layer.call.attrs.keepdims)), "sum")
        total = rz.emit(relax.op.subtract(total, rz.const(n * q.zp, "int64")), "centered")
        out_scale, out_zp = rz.qparams(layer.out, dtype)
        ndim = len(layer.out.ty.shape)
        out = rz.requantize(total, q.scale / n, out_scale, out_zp, dtype, ndim=max(ndim, 1))
        return QTensor(out, out_scale, out_zp, dtype)


@register("relax.nn.avg_pool2d")
class AvgPoolRule(Rule):
    def match(self, binding, graph):
        attrs = binding.value.attrs
        padded = any(int(p) for p in attrs.padding)
        if not graph.is_tensor_var(binding.value.args[0]) or attrs.ceil_mode or attrs.layout != "NCHW":
            return None
        if padded and not attrs.count_include_pad:
            return None  # the divisor varies per position: keep fp32
        return Layer.single(binding, self, graph, inputs=[binding.value.args[0]])

    def realize(self, layer, rz):
        from tvm import relax

        attrs = layer.call.attrs
        dtype = rz.act_dtype(layer)
        q = rz.qin(layer.inputs[0], dtype)
        kh, kw = (int(k) for k in attrs.pool_size)
        c = int(layer.inputs[0].ty.shape[1])
        x = rz.emit(relax.op.subtract(relax.op.astype(q.expr, "int32"), rz.const(q.zp, "int32")), "centered")
        ones = np.ones((c, 1, kh, kw), np.int32)
        top, left, bottom, right = (int(p) for p in attrs.padding)
        total = rz.emit(relax.op.nn.conv2d(x, rz.const(ones, "int32"), strides=attrs.strides,
                                           padding=[top, left, bottom, right], dilation=attrs.dilation,
                                           groups=c, out_dtype="int32"), "window_sum")
        out_scale, out_zp = rz.qparams(layer.out, dtype)
        out = rz.requantize(total, q.scale / (kh * kw), out_scale, out_zp, dtype)
        return QTensor(out, out_scale, out_zp, dtype)
