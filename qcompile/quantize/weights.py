"""Constant operands to integers: weight codes with their scales, and the bias in accumulator units.

Used by realize and by the rules that own a weight (conv2d, dense/matmul), and by the QDQ export.
"""

from __future__ import annotations

import numpy as np

from . import bias_correction
from .observers import weight_qparams
from .reference import quantize as quantize_ref


def quantize_weight(w: np.ndarray, dtype: str, qconfig, axis: int):
    """Symmetric weight codes, per channel along `axis` (or per tensor when per_channel is off)."""
    per_channel_axis = axis if qconfig.per_channel else None
    scale, _ = weight_qparams(w, axis=per_channel_axis, dtype=dtype, method=qconfig.weight_method, symmetric=True)
    scale = np.broadcast_to(np.asarray(scale, np.float32), (w.shape[axis],)).copy()
    if getattr(qconfig, "power_of_two_scales", False):
        scale = (2.0 ** np.ceil(np.log2(scale))).astype(np.float32)
    q = quantize_ref(w, scale, 0, dtype, axis=axis, narrow_range=True)
    return scale, q


def layer_weight(layer, rz, axis: int, dtype: str | None = None):
    """(scale, codes, bias) of a conv2d/dense layer's constant weight at its precision.

    The float bias is corrected for the codes' mean output error (``bias_correction``) when calibration
    measured the layer's input means (``plan.input_means``); otherwise it is the layer's own bias."""
    dtype = dtype or rz.weight_dtype(layer)
    scale, codes = quantize_weight(layer.weight, dtype, rz.qconfig, axis=axis)
    mean = getattr(rz.plan, "input_means", {}).get(layer.inputs[0])
    if mean is None:
        return scale, codes, layer.bias
    groups = int(layer.call.attrs.groups) if layer.op == "relax.nn.conv2d" else 1
    bias = bias_correction.corrected(layer.bias, layer.weight, scale, codes, mean, layer.op, axis, groups)
    return scale, codes, bias


def fold_bias(bias, acc_scale: np.ndarray, x_zp: int, w_sums: np.ndarray) -> np.ndarray:
    """bias in accumulator units, with the input zero-point correction folded in (int64)."""
    b = np.zeros_like(acc_scale) if bias is None else np.asarray(bias, np.float64)
    q = np.rint(b / acc_scale).astype(np.int64) - int(x_zp) * w_sums.astype(np.int64)
    return q
