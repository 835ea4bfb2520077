"""Reference integer semantics: the numpy oracle for quantized kernels.

Compiled kernels are tested bit-exactly against these functions, and the Relax
realize pass emits the same arithmetic.  The rules:

quantize (float -> int), computed in float32 like the model:
    ``q = clamp(rint(float32(x) / float32(scale)) + zero_point, qmin, qmax)``
    ``rint`` rounds to nearest, **ties to even** (``numpy.rint``, IEEE
    ``nearbyint`` in the default rounding mode): 0.5 -> 0, 1.5 -> 2, -2.5 -> -2.
    The division is a true IEEE float32 division, not a multiply by
    ``1/scale`` (the two differ in the last bit).  ``narrow_range`` drops the
    lowest code (int8 -> [-127, 127]); symmetric weights use it.  NaN inputs
    are rejected; +-inf saturate.

dequantize (int -> float), in float32:
    ``x = float32(q - zero_point) * float32(scale)``

integer ops (conv, matmul) subtract zero points first, in int64, then
multiply-accumulate; a padded input element equals the input zero point, so
it contributes exactly 0.  The result is the exact accumulator (int64 by
default; ``acc_dtype="int32"`` checks that it fits and casts).

requantize (int accumulator -> int):
    round half up (toward +inf) in int64; see ``fixed_point``.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .fixed_point import (along_axis, multiplier_bits_for, operand_magnitude, qrange, quantize_multiplier,
                          requantize, rescale)

__all__ = [
    "quantize",
    "dequantize",
    "quant_limits",
    "qconv2d",
    "qmatmul",
    "requantize",
    "add_requantized",
    "add_left_shift",
    "lut_table",
    "lut_apply",
    "scale_shift_parts",
    "scale_shift",
]


def quant_limits(dtype, narrow_range: bool = False) -> tuple[int, int]:
    """``(qmin, qmax)`` for quantize; ``narrow_range`` leaves out ``qmin`` (int8 -> -127).

    The narrow range makes symmetric weights safe to negate (no -128 whose
    negation overflows) and matches ORT / TFLite weight quantization.
    """
    qmin, qmax = qrange(dtype)
    return (qmin + 1 if narrow_range else qmin), qmax


def quantize(x, scale, zero_point, dtype, axis: int | None = None, narrow_range: bool = False) -> np.ndarray:
    """Quantize floats: ``clamp(rint(float32(x) / float32(scale)) + zero_point, qmin, qmax)``.

    Ties round to even (``numpy.rint``).  Per-channel ``scale``/``zero_point``
    are 1-D arrays broadcast along ``axis``; with ``axis=None`` they must be
    scalars.  Returns an array of ``dtype``.
    """
    x32 = np.asarray(x, dtype=np.float32)
    if np.isnan(x32).any():
        raise ValueError("cannot quantize NaN values")
    scale32 = _param(scale, np.float32, x32.shape, axis)
    if np.any(scale32 <= 0):
        raise ValueError("quantization scales must be > 0")
    zero_point = _param(zero_point, np.int64, x32.shape, axis)
    qmin, qmax = quant_limits(dtype, narrow_range)
    rounded = np.rint(x32 / scale32).astype(np.float64)
    rounded = np.clip(rounded, qmin - zero_point, qmax - zero_point)
    return (rounded.astype(np.int64) + zero_point).astype(dtype)


def dequantize(q, scale, zero_point, axis: int | None = None) -> np.ndarray:
    """Dequantize integers: ``float32(q - zero_point) * float32(scale)``."""
    q = np.asarray(q)
    scale32 = _param(scale, np.float32, q.shape, axis)
    zero_point = _param(zero_point, np.int64, q.shape, axis)
    return (q.astype(np.int64) - zero_point).astype(np.float32) * scale32


def _param(values, dtype, shape, axis: int | None) -> np.ndarray:
    """A quantization parameter shaped to broadcast against ``shape``."""
    values = np.asarray(values, dtype=dtype)
    if axis is None:
        if values.size != 1:
            raise ValueError(f"per-channel parameters (shape {values.shape}) need an axis")
        return values.reshape(())
    return along_axis(values, shape, axis)


# ---------------------------------------------------------------------------
# integer kernels
# ---------------------------------------------------------------------------


def qmatmul(a_q, a_zp, b_q, b_zp, acc_dtype: str = "int64") -> np.ndarray:
    """``(a - a_zp) @ (b - b_zp)`` exactly, broadcasting like ``numpy.matmul``.

    ``b_zp`` may be per output column (1-D of length N for ``b`` of shape
    ``(..., K, N)``); ``a_zp`` is per tensor.
    """
    a = _centered(a_q, a_zp)
    b = _centered(b_q, b_zp)
    return _as_acc(np.matmul(a, b), acc_dtype)


def qconv2d(
    x_q,
    x_zp,
    w_q,
    w_zp,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    acc_dtype: str = "int64",
) -> np.ndarray:
    """Integer 2-D convolution (NCHW input, OIHW weight) returning the exact accumulator.

    ``acc[n, o, y, x] = sum (x_q - x_zp) * (w_q - w_zp[o])`` over the receptive
    field; padding behaves as if padded with ``x_zp`` (contributes 0).
    ``padding`` is an int, ``(pad_h, pad_w)`` or ``(top, left, bottom, right)``
    (Relax / ONNX order).  Grouped and depthwise (``groups == C``) convs are
    supported.  Implemented as im2col + one batched matmul per group.
    """
    x = _centered(x_q, x_zp)
    w = np.asarray(w_q).astype(np.int64) - _out_channel_zp(w_zp, np.asarray(w_q).shape[0])
    _check_conv_shapes(x.shape, w.shape, groups)
    x = _pad_spatial(x, _four(padding, "padding"))
    cols = _im2col(x, w.shape[2:], _pair(stride, "stride"), _pair(dilation, "dilation"))
    return _as_acc(_grouped_matmul(cols, w, groups), acc_dtype)


def _centered(q, zero_point) -> np.ndarray:
    """Integer codes minus their zero point, in int64 (exact)."""
    q = np.asarray(q)
    if not np.issubdtype(q.dtype, np.integer):
        raise TypeError(f"quantized operands must be integers, got dtype {q.dtype}")
    return q.astype(np.int64) - np.asarray(zero_point, dtype=np.int64)


def _out_channel_zp(w_zp, out_channels: int) -> np.ndarray:
    zp = np.asarray(w_zp, dtype=np.int64)
    if zp.size == 1:
        return zp.reshape(())
    return along_axis(zp, (out_channels, 1, 1, 1), 0)


def _check_conv_shapes(x_shape, w_shape, groups: int) -> None:
    if len(x_shape) != 4 or len(w_shape) != 4:
        raise ValueError(f"qconv2d expects NCHW input and OIHW weight, got {x_shape} and {w_shape}")
    channels, out_channels, group_channels = x_shape[1], w_shape[0], w_shape[1]
    if groups < 1 or channels != group_channels * groups or out_channels % groups:
        raise ValueError(
            f"groups={groups} does not fit input channels {channels}, weight {tuple(w_shape)}"
        )


def _pair(value, what: str) -> tuple[int, int]:
    values = (value, value) if np.isscalar(value) else tuple(value)
    if len(values) != 2 or min(values) < 1:
        raise ValueError(f"{what} must be a positive int or a pair, got {value}")
    return int(values[0]), int(values[1])


def _four(padding, what: str) -> tuple[int, int, int, int]:
    """Padding as ``(top, left, bottom, right)``."""
    values = (padding,) * 4 if np.isscalar(padding) else tuple(padding)
    if len(values) == 2:
        values = values * 2
    if len(values) != 4 or min(values) < 0:
        raise ValueError(f"{what} must be an int, (h, w) or (top, left, bottom, right) >= 0, got {padding}")
    return tuple(int(v) for v in values)


def _pad_spatial(x: np.ndarray, pads: tuple[int, int, int, int]) -> np.ndarray:
    top, left, bottom, right = pads
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))


def _im2col(x: np.ndarray, kernel, stride, dilation) -> np.ndarray:
    """Patches of shape ``(N, C, OH, OW, KH, KW)`` (a strided view, no copy yet)."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    extent_h, extent_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    if x.shape[2] < extent_h or x.shape[3] < extent_w:
        raise ValueError(f"kernel extent {(extent_h, extent_w)} exceeds padded input {x.shape[2:]}")
    windows = sliding_window_view(x, (extent_h, extent_w), axis=(2, 3))
    return windows[:, :, ::sh, ::sw, ::dh, ::dw]


def _grouped_matmul(cols: np.ndarray, w: np.ndarray, groups: int) -> np.ndarray:
    """Contract patches with weights per group: ``(N,C,OH,OW,KH,KW) x (O,C/g,KH,KW) -> (N,O,OH,OW)``."""
    n, channels, oh, ow, kh, kw = cols.shape
    out_channels = w.shape[0]
    cg, og = channels // groups, out_channels // groups
    cols = cols.reshape(n, groups, cg, oh, ow, kh, kw).transpose(0, 1, 3, 4, 2, 5, 6)
    cols = cols.reshape(n, groups, oh * ow, cg * kh * kw)
    wmat = w.reshape(groups, og, cg * kh * kw).transpose(0, 2, 1)
    out = np.matmul(cols, wmat)  # (N, G, OH*OW, O/g)
    return out.transpose(0, 1, 3, 2).reshape(n, out_channels, oh, ow)


def _as_acc(acc: np.ndarray, acc_dtype: str) -> np.ndarray:
    """Return the accumulator in ``acc_dtype``, refusing values that would wrap."""
    qmin, qmax = qrange(acc_dtype)
    if acc.size and (acc.min() < qmin or acc.max() > qmax):
        raise OverflowError(
            f"accumulator values in [{acc.min()}, {acc.max()}] do not fit {acc_dtype}"
        )
    return acc.astype(acc_dtype)


# ---------------------------------------------------------------------------
# quantized add
# ---------------------------------------------------------------------------


def add_left_shift(dtype) -> int:
    """Headroom shift for ``add_requantized``: 20 for 8-bit, 15 for 16-bit (TFLite's values).

    Shifting the centered inputs left before rescaling keeps the rounding
    error of the two input rescales far below one output LSB: 8-bit inputs
    become < 2**28 and 16-bit inputs < 2**31, so they still fit int32 and the
    following int64 products stay below 2**63.
    """
    bits = int(qrange(dtype)[1] - qrange(dtype)[0]).bit_length()
    shifts = {8: 20, 16: 15}
    if bits not in shifts:
        raise ValueError(f"add_requantized supports 8- and 16-bit outputs, got {dtype}")
    return shifts[bits]


def add_requantized(a_q, a_scale, a_zp, b_q, b_scale, b_zp, out_scale, out_zp, dtype) -> np.ndarray:
    """Add two quantized tensors with different (per-tensor) scales, all in integers.

    TFLite's scheme: with ``m = 2 * max(a_scale, b_scale)`` and
    ``L = add_left_shift(dtype)``::

        a' = rescale((a_q - a_zp) << L, quantize_multiplier(a_scale / m))
        b' = rescale((b_q - b_zp) << L, quantize_multiplier(b_scale / m))
        y  = requantize(a' + b', quantize_multiplier(m / (2**L * out_scale)), out_zp, qmin, qmax)

    All three steps use the one round-half-up rule of ``fixed_point``.  Inputs
    broadcast like numpy; the result has dtype ``dtype``.
    """
    shift_left = add_left_shift(dtype)
    twice_max = 2.0 * max(float(a_scale), float(b_scale))
    a_mult, a_shift = quantize_multiplier(float(a_scale) / twice_max)
    b_mult, b_shift = quantize_multiplier(float(b_scale) / twice_max)
    out_mult, out_shift = quantize_multiplier(twice_max / (2.0**shift_left * float(out_scale)))
    a = rescale(_centered(a_q, a_zp) << shift_left, a_mult, a_shift)
    b = rescale(_centered(b_q, b_zp) << shift_left, b_mult, b_shift)
    qmin, qmax = qrange(dtype)
    return requantize(a + b, out_mult, out_shift, out_zp, qmin, qmax).astype(dtype)


# ---------------------------------------------------------------------------
# lookup tables (pointwise activations)
# ---------------------------------------------------------------------------


def lut_table(fn, in_scale, in_zp, out_scale, out_zp, dtype) -> np.ndarray:
    """The output code of every input code of ``dtype``, in code order (``qmin`` first).

    ``table[i] = quantize(fn(dequantize(qmin + i)))``: ``fn`` gets the dequantized float32
    inputs as float64 and returns floats; the table has 2**bits entries of ``dtype``.
    """
    qmin, qmax = qrange(dtype)
    codes = np.arange(qmin, qmax + 1, dtype=np.int64)
    real = dequantize(codes, in_scale, in_zp).astype(np.float64)
    return quantize(np.asarray(fn(real), np.float64), out_scale, out_zp, dtype)


def lut_apply(q, table) -> np.ndarray:
    """Look every code of ``q`` up in ``table`` (from ``lut_table`` for q's dtype)."""
    q = np.asarray(q)
    return np.asarray(table)[q.astype(np.int64) - qrange(q.dtype)[0]]


# ---------------------------------------------------------------------------
# per-channel scale and shift (a batch norm with no conv to fold into)
# ---------------------------------------------------------------------------

SCALE_SHIFT_HEADROOM = 16
"""Bits the centered codes are shifted left by, so the shift rounds to 2**-16 of an input step."""


def scale_shift_parts(in_scale, in_zp, scale, shift, dtype, axis: int = 1, ndim: int = 4):
    """Integer parameters of ``y = scale[c] * x + shift[c]`` on codes of ``dtype`` (scale[c] != 0):
    ``(sign, bias, unit, bound)``, shaped to broadcast along ``axis`` of ``ndim``.

    The accumulator is ``acc = sign[c] * (q - in_zp) * 2**H + bias[c]`` in units of
    ``unit[c] = in_scale * |scale[c]| / 2**H`` (``H = SCALE_SHIFT_HEADROOM``), with
    ``bias[c] = rint(shift[c] / unit[c])``; ``bound`` is the largest ``|acc|``.
    """
    scale = np.asarray(scale, np.float64).reshape(-1)
    if np.any(scale == 0):
        raise ValueError("a zero scale has no integer form")
    shape = [1] * ndim
    shape[axis] = scale.size
    unit = float(in_scale) * np.abs(scale) / 2.0**SCALE_SHIFT_HEADROOM
    bias = np.rint(np.asarray(shift, np.float64).reshape(-1) / unit).astype(np.int64)
    sign = np.sign(scale).astype(np.int64) << SCALE_SHIFT_HEADROOM
    bound = (operand_magnitude(dtype, in_zp) << SCALE_SHIFT_HEADROOM) + int(np.abs(bias).max(initial=0))
    return sign.reshape(shape), bias.reshape(shape), unit, bound


def scale_shift(q, in_scale, in_zp, scale, shift, out_scale, out_zp, qmin: int, qmax: int,
                axis: int = 1) -> np.ndarray:
    """``scale[c] * x + shift[c]`` (c along ``axis``) on codes ``q``, requantized to ``out_scale``/``out_zp``,
    clamped to ``[qmin, qmax]`` (a fused ReLU's bounds), all in integers; see ``scale_shift_parts``."""
    q = np.asarray(q)
    sign, bias, unit, bound = scale_shift_parts(in_scale, in_zp, scale, shift, q.dtype, axis, q.ndim)
    acc = _centered(q, in_zp) * sign + bias
    mult, sh = quantize_multiplier(unit / float(out_scale), bits=multiplier_bits_for(bound))
    return requantize(acc, mult, sh, out_zp, qmin, qmax, axis=axis)
