"""matmul: dense (activation x constant weight, from Gemm/MatMul/Linear) and
activation x activation (batched matmul, transformer attention).

Dense, per output column n (weights symmetric, zero point 0):
    acc[..., n] = x_q @ w_q[:, n] + bias_q[n],  bias_q[n] = round(bias[n]/(s_x s_w[n])) - x_zp * sum_k w_q[k, n]
Activation x activation: both operands are centred (q - zp) in int16, so
    acc = (a_q - a_zp) @ (b_q - b_zp)   exactly, in int32 (int64 for 16-bit codes).
"""

from __future__ import annotations

import numpy as np

from .. import fixed_point
from ..weights import fold_bias, layer_weight
from ..layer import Layer, QTensor
from . import Rule, register
from ._fuse import absorb_activation, absorb_bias


@register("relax.matmul")
class MatmulRule(Rule):
    float_output = True

    def match(self, binding, graph):
        call = binding.value
        a, b = call.args
        if not graph.is_tensor_var(a):
            return None
        weight = graph.const(b)
        if weight is not None and weight.ndim == 2 and weight.dtype.kind == "f":
            layer = Layer.single(binding, self, graph, inputs=[a])
            layer.weight = weight.astype(np.float32)
            ndim = len(binding.var.ty.shape)
            absorb_bias(layer, graph, weight.shape[1], axis=ndim - 1, ndim=ndim)
            absorb_activation(layer, graph)
            return layer
        if graph.is_tensor_var(b):
            return Layer.single(binding, self, graph, inputs=[a, b])
        return None

    def realize(self, layer, rz):
        if rz.is_dynamic(layer):
            return self._dynamic(layer, rz)
        return self._dense(layer, rz) if layer.weight is not None else self._batched(layer, rz)

    def _dynamic(self, layer, rz):
        """int8 x int8 -> int32 with run-time activation scales, one per token (row of x; column of a
        right operand); the result is float: y = float(acc) * (s_x[t] * s_w[n]) + bias, then the fused
        ReLU/clip in float."""
        import numpy as np
        from tvm import relax

        bias = layer.bias
        if layer.weight is not None:
            x_q, sx = rz.dynamic_quantize(layer.inputs[0], axis=-1)
            w_scale, w_q, bias = layer_weight(layer, rz, axis=1, dtype="int8")
            acc = rz.emit(relax.op.matmul(x_q, rz.const(w_q, "int8"), out_dtype="int32"), "dyn_dense")
            scale = rz.emit(relax.op.multiply(sx, rz.const(w_scale.astype(np.float32), "float32")), "acc_scale")
        else:
            (a_q, sa), (b_q, sb) = rz.dynamic_quantize(layer.inputs[0], axis=-1), rz.dynamic_quantize(layer.inputs[1], axis=-2)
            acc = rz.emit(relax.op.matmul(a_q, b_q, out_dtype="int32"), "dyn_bmm")
            scale = rz.emit(relax.op.multiply(sa, sb), "acc_scale")
        y = rz.emit(relax.op.multiply(relax.op.astype(acc, "float32"), scale), "dequant")
        if bias is not None:
            y = rz.emit(relax.op.add(y, rz.const(np.asarray(bias, np.float32), "float32")), "biased")
        return rz.float_clip(y, layer.clip)

    def _dense(self, layer, rz):
        from tvm import relax

        a_dtype, w_dtype = rz.act_dtype(layer), rz.weight_dtype(layer)
        x = rz.qin(layer.inputs[0], a_dtype)
        w_scale, w_q, bias = layer_weight(layer, rz, axis=1, dtype=w_dtype)
        acc_dtype = "int32" if w_dtype == "int8" else "int64"
        acc = rz.emit(relax.op.matmul(x.expr, rz.const(w_q, w_dtype), out_dtype=acc_dtype), "dense")
        acc_scale = x.scale * w_scale.astype(np.float64)
        bias_q = fold_bias(bias, acc_scale, x.zp, w_q.sum(axis=0))
        ndim = len(layer.out.ty.shape)
        acc = rz.emit(relax.op.add(acc, rz.const(bias_q, acc_dtype)), "biased")
        if layer.attrs.get("float_out"):
            return rz.dequantize_acc(acc, acc_scale, layer, axis=ndim - 1, ndim=ndim)
        out_scale, out_zp = rz.qparams(layer.out, a_dtype)
        bound = fixed_point.acc_bound(w_q.shape[0], a_dtype, w_dtype, x.zp, 0) + int(np.abs(bias_q).max(initial=0))
        out = rz.requantize(acc, acc_scale, out_scale, out_zp, a_dtype, axis=ndim - 1, clip=layer.clip,
                            acc_bound=bound if acc_dtype == "int64" else None, ndim=ndim)
        return QTensor(out, out_scale, out_zp, a_dtype)

    def _batched(self, layer, rz):
        from tvm import relax

        a_dtype = rz.act_dtype(layer)
        wide = "int16" if a_dtype in ("int8", "uint8") else "int32"
        acc_dtype = "int32" if wide == "int16" else "int64"
        qa, qb = (rz.qin(v, a_dtype) for v in layer.inputs)
        ca = rz.emit(relax.op.subtract(relax.op.astype(qa.expr, wide), rz.const(qa.zp, wide)), "a_centered")
        cb = rz.emit(relax.op.subtract(relax.op.astype(qb.expr, wide), rz.const(qb.zp, wide)), "b_centered")
        acc = rz.emit(relax.op.matmul(ca, cb, out_dtype=acc_dtype), "bmm")
        if layer.attrs.get("float_out"):
            return rz.dequantize_acc(acc, qa.scale * qb.scale, layer, axis=len(layer.out.ty.shape) - 1,
                                     ndim=len(layer.out.ty.shape))
        k = int(layer.inputs[0].ty.shape[-1])
        out_scale, out_zp = rz.qparams(layer.out, a_dtype)
        ndim = len(layer.out.ty.shape)
        bound = k * fixed_point.operand_magnitude(a_dtype, qa.zp) * fixed_point.operand_magnitude(a_dtype, qb.zp)
        out = rz.requantize(acc, qa.scale * qb.scale, out_scale, out_zp, a_dtype, axis=ndim - 1,
                            acc_bound=bound if acc_dtype == "int64" else None, ndim=ndim)
        return QTensor(out, out_scale, out_zp, a_dtype)
