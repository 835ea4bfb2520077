"""Fixed-point rescaling: the one integer rule every quantized kernel uses.

A quantized op computes an integer accumulator ``acc`` (int32 or int64) whose
real value is ``acc * s_in * s_w``.  To store it with the output scale ``s_out``
it must be multiplied by the real number ``M = s_in * s_w / s_out``.  Targets
without fast float (and the bit-exact tests) do that in integers:

    M ~= multiplier * 2**-shift       multiplier in [2**(bits-1), 2**bits), shift in [1, 62]

    y = clamp(((int64(acc) * multiplier + (1 << (shift - 1))) >> shift) + zero_point,
              qmin, qmax)

``>>`` is an *arithmetic* right shift (floor division by ``2**shift``), so the
rule is ``floor(acc * M + 1/2)``: round half up, i.e. ties go toward +inf::

     2.5 ->  3      1.5 ->  2      0.5 -> 1
    -0.5 ->  0     -1.5 -> -1     -2.5 -> -2

Why this rule and not ties-to-even or gemmlowp's two-step
``SaturatingRoundingDoublingHighMul`` + ``RoundingDivideByPOT``: it is one
64-bit multiply, one add and one shift, exact in int64 (no intermediate
rounding, no saturation corner cases), and every target (LLVM x86/ARM, CUDA,
C) implements it identically.  The Relax realize pass emits exactly this
expression; ``reference.py`` and the tests use this module, so a compiled
kernel must agree with ``requantize`` bit for bit.

Overflow rule: ``|acc| * multiplier + 2**(shift-1)`` must stay below ``2**63``.
``shift <= 62`` caps the rounding term at ``2**61``.  With int32 accumulators
(int8 x int8) any 31-bit multiplier fits: ``(2**31 - 1)**2 + 2**61 < 2**63``.
int16 x int16 products need int64 accumulation and the accumulator can exceed
``2**32``; ``multiplier_bits_for(acc_bound(...))`` then returns fewer than 31
multiplier bits (the relative error of the multiplier is ``2**-bits``, still far
below one output LSB).  ``requantize`` refuses inputs that could overflow
instead of silently wrapping.

This module is pure numpy so it can serve as the oracle for compiled kernels.
"""

from __future__ import annotations

import numpy as np

MAX_SHIFT = 62
"""Largest right shift: keeps the rounding term ``1 << (shift - 1)`` at most ``2**61``."""

MAX_MULTIPLIER_BITS = 31
"""Multipliers fit in int32 so a target can keep them as 32-bit constants."""

_INT64_LIMIT = 2**63

_QRANGES = {
    "int8": (-128, 127),
    "uint8": (0, 255),
    "int16": (-32768, 32767),
    "uint16": (0, 65535),
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
}


def qrange(dtype) -> tuple[int, int]:
    """Return ``(qmin, qmax)`` of an integer storage dtype (name or numpy dtype).

    Only the dtypes the quantizer emits are accepted, so a typo like "int4" or
    "float32" fails here rather than producing a meaningless clamp.
    """
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in _QRANGES:
        raise ValueError(f"unsupported quantized dtype '{dtype}'; expected one of {sorted(_QRANGES)}")
    return _QRANGES[name]


def num_bits(dtype) -> int:
    """Bit width of a quantized dtype (8 for int8/uint8, 16 for int16/uint16, ...)."""
    qmin, qmax = qrange(dtype)
    return int(qmax - qmin).bit_length()


def is_signed(dtype) -> bool:
    """True when the dtype has negative codes (int*), False for uint*."""
    return qrange(dtype)[0] < 0


def along_axis(values, shape, axis: int) -> np.ndarray:
    """Reshape a scalar or per-channel 1-D parameter so it broadcasts along ``axis`` of ``shape``.

    Per-channel parameters are stored as 1-D arrays; this is the single place
    that decides how they line up with a tensor (negative ``axis`` counts from
    the end, like numpy).  A length mismatch is an error, not a silent broadcast.
    """
    values = np.asarray(values)
    if values.ndim == 0 or (values.ndim == 1 and values.size == 1):
        return values.reshape(())
    if values.ndim != 1:
        raise ValueError(f"per-channel parameters must be 1-D, got shape {values.shape}")
    ndim = len(shape)
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for a tensor of shape {tuple(shape)}")
    axis %= ndim
    if shape[axis] != values.size:
        raise ValueError(
            f"{values.size} per-channel values do not match axis {axis} of shape {tuple(shape)}"
        )
    view = [1] * ndim
    view[axis] = values.size
    return values.reshape(view)


# ---------------------------------------------------------------------------
# multiplier / shift
# ---------------------------------------------------------------------------


def quantize_multiplier(real_scale, bits: int = MAX_MULTIPLIER_BITS):
    """Represent positive real scale(s) as ``multiplier * 2**-shift``.

    ``multiplier`` is normalized to ``[2**(bits-1), 2**bits)`` (as in gemmlowp /
    TFLite), which gives a relative error of at most ``2**-bits``.  Rounding of
    the mantissa is to nearest (ties to even); a mantissa that rounds up to
    ``2**bits`` is renormalized, so the invariant always holds.

    Special cases, chosen so every op has *some* exact integer meaning:

    * ``0`` (a dead channel whose weights are all zero) -> ``(0, 1)``: the output
      is the zero point.
    * scales below ``2**(bits-1-62)`` would need ``shift > 62``; they get
      ``shift = 62`` and a smaller, *denormalized* multiplier
      ``round(scale * 2**62)`` (possibly 0).  The absolute error stays below
      ``2**-63``, far below one output LSB.
    * scales of ``2**(bits-1)`` or more need ``shift < 1`` and are rejected, as
      are negative, NaN and infinite scales.

    A Python/numpy scalar returns ``(int, int)``; an array returns two int64
    arrays of the same shape (per-channel requantization).
    """
    if not 1 <= bits <= MAX_MULTIPLIER_BITS:
        raise ValueError(f"bits must be in [1, {MAX_MULTIPLIER_BITS}], got {bits}")
    scale = np.asarray(real_scale, dtype=np.float64)
    _check_scales(scale)
    mantissa, exponent = np.frexp(scale)  # scale = mantissa * 2**exponent, mantissa in [0.5, 1)
    multiplier = np.rint(np.ldexp(mantissa, bits)).astype(np.int64)
    carried = multiplier == (1 << bits)
    multiplier = np.where(carried, multiplier >> 1, multiplier)
    shift = bits - (exponent.astype(np.int64) + carried)
    if np.any((shift < 1) & (scale > 0)):
        raise ValueError(_too_large_message(scale, bits))
    tiny = shift > MAX_SHIFT
    multiplier = np.where(tiny, np.rint(np.ldexp(scale, MAX_SHIFT)), multiplier).astype(np.int64)
    shift = np.where(tiny, MAX_SHIFT, shift)
    dead = scale == 0
    multiplier = np.where(dead, 0, multiplier).astype(np.int64)
    shift = np.where(dead, 1, shift).astype(np.int64)
    if scale.ndim == 0:
        return int(multiplier), int(shift)
    return multiplier, shift


def _check_scales(scale: np.ndarray) -> None:
    """Reject scales with no fixed-point meaning, naming the offending values."""
    bad = ~np.isfinite(scale) | (scale < 0)
    if np.any(bad):
        examples = scale[bad].ravel()[:4].tolist()
        raise ValueError(
            f"requantization scales must be finite and >= 0; got {int(bad.sum())} bad value(s), e.g. {examples}"
        )


def _too_large_message(scale: np.ndarray, bits: int) -> str:
    biggest = float(np.max(scale))
    return (
        f"requantization scale {biggest:g} is too large for a {bits}-bit multiplier with shift >= 1 "
        f"(must be < 2**{bits - 1} = {2 ** (bits - 1)})"
    )


# ---------------------------------------------------------------------------
# the rounding rule
# ---------------------------------------------------------------------------


def rescale(acc, multiplier, shift, axis: int = 1) -> np.ndarray:
    """``(int64(acc) * multiplier + (1 << (shift - 1))) >> shift``: round-half-up rescaling.

    This is ``requantize`` without the zero point and clamp; the quantized add
    uses it to bring both inputs to a common scale.  Per-channel ``multiplier``
    / ``shift`` (1-D) broadcast along ``axis`` of ``acc``.  Raises
    ``OverflowError`` when the int64 product could wrap.
    """
    acc = _as_int64(acc)
    multiplier = along_axis(np.asarray(multiplier, dtype=np.int64), acc.shape, axis)
    shift = along_axis(np.asarray(shift, dtype=np.int64), acc.shape, axis)
    _check_shift(shift)
    _check_product_fits(acc, multiplier, shift)
    rounding = np.left_shift(np.int64(1), shift - 1)
    return (acc * multiplier + rounding) >> shift


def requantize(acc, multiplier, shift, zero_point, qmin: int, qmax: int, axis: int = 1) -> np.ndarray:
    """Requantize an integer accumulator: the project's single rounding rule.

    ``y = clamp(((int64(acc) * multiplier + (1 << (shift - 1))) >> shift) + zero_point, qmin, qmax)``

    Arithmetic shift, so ties round toward +inf (-2.5 -> -2, 2.5 -> 3); see
    the module docstring for why.  ``multiplier``, ``shift`` and ``zero_point``
    are scalars or 1-D per-channel arrays broadcast along ``axis`` (1 = C of
    NCHW; pass -1 for the last axis of a matmul).  Returns int64 values already
    inside ``[qmin, qmax]``, so casting to the storage dtype is lossless.
    """
    scaled = rescale(acc, multiplier, shift, axis)
    zero_point = along_axis(np.asarray(zero_point, dtype=np.int64), scaled.shape, axis)
    return np.clip(scaled + zero_point, qmin, qmax)


def _as_int64(acc) -> np.ndarray:
    acc = np.asarray(acc)
    if not np.issubdtype(acc.dtype, np.integer):
        raise TypeError(f"accumulators must be integers, got dtype {acc.dtype}")
    return acc.astype(np.int64)


def _check_shift(shift: np.ndarray) -> None:
    if shift.size and (shift.min() < 1 or shift.max() > MAX_SHIFT):
        raise ValueError(f"shift must be in [1, {MAX_SHIFT}], got values in [{shift.min()}, {shift.max()}]")


def _check_product_fits(acc: np.ndarray, multiplier: np.ndarray, shift: np.ndarray) -> None:
    """Conservative int64 guard (global max |acc| times global max multiplier)."""
    if acc.size == 0:
        return
    if multiplier.size and multiplier.min() < 0:
        raise ValueError("multipliers must be >= 0")
    max_acc = int(np.max(np.abs(acc)))
    max_mult = int(np.max(multiplier)) if multiplier.size else 0
    worst = max_acc * max_mult + (1 << (int(np.max(shift)) - 1))
    if worst >= _INT64_LIMIT:
        raise OverflowError(
            f"int64 overflow in requantize: |acc| up to {max_acc} times multiplier {max_mult} "
            f"exceeds 2**63; use fewer multiplier bits (see multiplier_bits_for)"
        )


# ---------------------------------------------------------------------------
# overflow guards
# ---------------------------------------------------------------------------


def operand_magnitude(dtype, zero_point=None) -> int:
    """Largest ``|q - zero_point|`` for codes ``q`` of ``dtype``.

    With ``zero_point=None`` the worst case over every zero point the dtype can
    hold is used (``qmax - qmin``, e.g. 255 for int8), because kernels subtract
    the zero point before multiplying.  Pass the actual zero point(s) (scalar
    or array) for a tighter bound, e.g. 128 for int8 with zero point 0.
    """
    qmin, qmax = qrange(dtype)
    if zero_point is None:
        return qmax - qmin
    zp = np.asarray(zero_point, dtype=np.int64)
    return int(max(qmax - zp.min(), zp.max() - qmin))


def acc_bound(k: int, a_dtype, w_dtype, a_zero_point=None, w_zero_point=None) -> int:
    """Max ``|sum_{i<k} (a_i - a_zp) * (w_i - w_zp)|`` for a dot product of length ``k``.

    This bounds the *mathematical* accumulator value, which is what the
    reference kernels compute (zero points subtracted first).  Kernels that
    expand the zero-point terms (``sum a*w - zp_w*sum a - ...``) have different
    intermediate ranges and need their own check.  See ``operand_magnitude``
    for the meaning of the zero-point arguments.
    """
    if k < 0:
        raise ValueError(f"dot-product length must be >= 0, got {k}")
    return int(k) * operand_magnitude(a_dtype, a_zero_point) * operand_magnitude(w_dtype, w_zero_point)


def multiplier_bits_for(acc_bound_value: int) -> int:
    """Most multiplier bits (<= 31) with ``acc_bound * (2**bits - 1) + 2**61 < 2**63``.

    ``2**61`` is the largest rounding term (``shift <= 62``).  Every int32
    accumulator gets the full 31 bits; int64 accumulators of int16 x int16
    products get fewer.  Raises ``ValueError`` if not even one bit fits.
    """
    bound = int(acc_bound_value)
    if bound < 0:
        raise ValueError(f"accumulator bound must be >= 0, got {bound}")
    budget = _INT64_LIMIT - 1 - (1 << (MAX_SHIFT - 1))
    for bits in range(MAX_MULTIPLIER_BITS, 0, -1):
        if bound * ((1 << bits) - 1) <= budget:
            return bits
    raise ValueError(f"accumulator bound {bound} is too large to requantize in int64 with any multiplier")


def check_no_overflow(k: int, a_dtype, w_dtype, acc_dtype, a_zero_point=None, w_zero_point=None) -> int:
    """Raise ``ValueError`` if a length-``k`` dot product could overflow ``acc_dtype``.

    Returns the accumulator bound when it fits.  Example: int16 x int16 into
    int32 overflows for k >= 2 even with zero points 0 (2 * 32768**2 = 2**31),
    and already at k = 1 for arbitrary zero points (65535**2 > 2**31).
    """
    bound = acc_bound(k, a_dtype, w_dtype, a_zero_point, w_zero_point)
    acc_max = qrange(acc_dtype)[1]
    if bound <= acc_max:
        return bound
    per_term = bound // k
    max_k = acc_max // per_term
    hint = f"keep k <= {max_k}" if max_k >= 1 else "even k=1 overflows"
    raise ValueError(
        f"{a_dtype} x {w_dtype} dot product of length k={k} can reach |acc| = {bound} "
        f"(= {k} * {operand_magnitude(a_dtype, a_zero_point)} * {operand_magnitude(w_dtype, w_zero_point)}), "
        f"which does not fit {acc_dtype} (max {acc_max}); accumulate in int64 or {hint}"
    )
