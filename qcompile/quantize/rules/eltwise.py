"""add and multiply of two activations (residual connections, gating).

add uses TFLite's integer scheme (see reference.add_requantized): both inputs are
centred, shifted left by L bits of headroom, rescaled to a common scale
2*max(s_a, s_b), summed, and requantized to the output. multiply is
(a_q - a_zp) * (b_q - b_zp) requantized with s_a * s_b / s_out.
A following ReLU/clip is absorbed as the clamp. An add of a constant that no
conv/matmul absorbed as a bias stays in fp32, and so does an add or multiply whose
output no integer layer reads (annotate: a transformer's residual add feeding
LayerNorm would only lose precision in int8).
"""

from __future__ import annotations

from .. import fixed_point
from ..reference import add_left_shift
from ..layer import Layer, QTensor
from . import Rule, register
from ._fuse import absorb_activation


class _BinaryRule(Rule):
    needs_integer_reader = True

    def match(self, binding, graph):
        a, b = binding.value.args
        if not (graph.is_tensor_var(a) and graph.is_tensor_var(b)):
            return None
        if tuple(a.ty.shape) != tuple(b.ty.shape) and not _broadcastable(a, b):
            return None
        layer = Layer.single(binding, self, graph, inputs=[a, b])
        absorb_activation(layer, graph)
        return layer


def _broadcastable(a, b) -> bool:
    import numpy as np

    try:
        np.broadcast_shapes(tuple(int(d) for d in a.ty.shape), tuple(int(d) for d in b.ty.shape))
        return True
    except (ValueError, TypeError):
        return False


# An add whose output grid is so coarse that one input keeps fewer than this many steps of it
# stays in fp32: e.g. attention scores + a -FLT_MAX padding mask, where an int8 output would
# round every score to the same code. The fp32 add keeps both; its consumer decides the rest.
MIN_INPUT_STEPS = 2.0


@register("relax.add")
class AddRule(_BinaryRule):
    def keep_float(self, layer, rz):
        dtype = rz.act_dtype(layer)
        try:
            out_scale, _ = rz.qparams(layer.out, dtype)
            spans = [max(abs(lo), abs(hi)) for lo, hi in (rz.real_range(v, dtype) for v in layer.inputs)]
        except KeyError:  # not calibrated (dynamic quantization): realize decides
            return None
        for v, span in zip(layer.inputs, spans):
            if span / out_scale < MIN_INPUT_STEPS:
                other = max(spans)
                return (f"input {v.name} (|x| <= {span:.3g}) would keep {span / out_scale:.2g} steps of the "
                        f"{dtype} output grid, whose range the other input sets (|x| <= {other:.3g})")
        return None

    def realize(self, layer, rz):
        from tvm import relax

        dtype = rz.act_dtype(layer)
        qa, qb = (rz.qin(v, dtype) for v in layer.inputs)
        out_scale, out_zp = rz.qparams(layer.out, dtype)
        shift_left = add_left_shift(dtype)
        twice_max = 2.0 * max(qa.scale, qb.scale)
        parts = []
        for q in (qa, qb):
            c = rz.emit(relax.op.subtract(relax.op.astype(q.expr, "int64"), rz.const(q.zp, "int64")), "centered")
            c = rz.emit(relax.op.left_shift(c, rz.const(shift_left, "int64")), "headroom")
            parts.append(_rescale(rz, c, q.scale / twice_max))
        total = rz.emit(relax.op.add(parts[0], parts[1]), "sum")
        ndim = len(layer.out.ty.shape)
        out = rz.requantize(total, twice_max / 2.0**shift_left, out_scale, out_zp, dtype, clip=layer.clip, ndim=ndim)
        return QTensor(out, out_scale, out_zp, dtype)


@register("relax.multiply")
class MultiplyRule(_BinaryRule):
    def realize(self, layer, rz):
        from tvm import relax

        dtype = rz.act_dtype(layer)
        qa, qb = (rz.qin(v, dtype) for v in layer.inputs)
        ca = rz.emit(relax.op.subtract(relax.op.astype(qa.expr, "int64"), rz.const(qa.zp, "int64")), "a_centered")
        cb = rz.emit(relax.op.subtract(relax.op.astype(qb.expr, "int64"), rz.const(qb.zp, "int64")), "b_centered")
        prod = rz.emit(relax.op.multiply(ca, cb), "product")
        out_scale, out_zp = rz.qparams(layer.out, dtype)
        ndim = len(layer.out.ty.shape)
        bound = fixed_point.operand_magnitude(dtype, qa.zp) * fixed_point.operand_magnitude(dtype, qb.zp)
        out = rz.requantize(prod, qa.scale * qb.scale, out_scale, out_zp, dtype, clip=layer.clip,
                            acc_bound=bound, ndim=ndim)
        return QTensor(out, out_scale, out_zp, dtype)


def _rescale(rz, x, real: float):
    """floor(x * M + 1/2) for int64 x: the fixed-point rule without zero point or clamp."""
    from tvm import relax

    mult, shift = fixed_point.quantize_multiplier(real)
    x = rz.emit(relax.op.multiply(x, rz.const(mult, "int64")), "scaled")
    x = rz.emit(relax.op.add(x, rz.const(1 << (shift - 1), "int64")), "rounded")
    return rz.emit(relax.op.right_shift(x, rz.const(shift, "int64")), "shifted")
