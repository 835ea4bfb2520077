"""Tests for the numpy integer oracle (quantize, conv, matmul, add)."""

import numpy as np
import pytest

from qcompile.quantize import fixed_point
from qcompile.quantize.reference import (
    add_left_shift,
    add_requantized,
    dequantize,
    qconv2d,
    qmatmul,
    quantize,
    requantize,
)

# ---------------------------------------------------------------------------
# quantize / dequantize
# ---------------------------------------------------------------------------


def test_quantize_ties_to_even():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49, -0.51])
    assert quantize(x, 1.0, 0, "int8").tolist() == [0, 2, 2, 0, -2, -2, 0, -1]
    assert quantize(x, 0.5, 10, "uint8").tolist() == [11, 13, 15, 9, 7, 5, 11, 9]


def test_quantize_divides_in_float32():
    rng = np.random.default_rng(0)
    x = rng.normal(size=10000).astype(np.float32)
    scale = np.float32(0.0123)
    expected = np.clip(np.rint(x / scale), -128, 127).astype(np.int8)
    np.testing.assert_array_equal(quantize(x, scale, 0, "int8"), expected)


def test_quantize_saturates_and_narrow_range():
    x = np.array([-1e9, -np.inf, 1e9, np.inf, -128.0])
    assert quantize(x, 1.0, 0, "int8").tolist() == [-128, -128, 127, 127, -128]
    assert quantize(x, 1.0, 0, "int8", narrow_range=True).tolist() == [-127, -127, 127, 127, -127]
    assert quantize(np.array([-5.0, 300.0]), 1.0, 3, "uint8").tolist() == [0, 255]
    assert quantize(np.array([3e9]), 1.0, 0, "int32").tolist() == [2**31 - 1]


def test_quantize_rejects_nan_and_bad_scale():
    with pytest.raises(ValueError, match="NaN"):
        quantize(np.array([np.nan]), 1.0, 0, "int8")
    with pytest.raises(ValueError, match="> 0"):
        quantize(np.array([1.0]), 0.0, 0, "int8")


def test_quantize_per_channel():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 12
    scale = np.array([0.5, 1.0, 2.0], dtype=np.float32)
    zero_point = np.array([0, 1, -1])
    q = quantize(x, scale, zero_point, "int8", axis=1)
    for c in range(3):
        np.testing.assert_array_equal(q[:, c], quantize(x[:, c], scale[c], zero_point[c], "int8"))
    with pytest.raises(ValueError, match="axis"):
        quantize(x, scale, 0, "int8")


def test_dequantize_round_trip_within_half_step():
    rng = np.random.default_rng(1)
    x = rng.uniform(-3, 5, size=5000).astype(np.float32)
    scale, zero_point = np.float32(8 / 255), -32
    restored = dequantize(quantize(x, scale, zero_point, "int8"), scale, zero_point)
    assert restored.dtype == np.float32
    assert np.max(np.abs(restored - x)) <= scale / 2 * (1 + 1e-5)
    assert dequantize(np.array([zero_point], np.int8), scale, zero_point)[0] == 0.0


# ---------------------------------------------------------------------------
# qconv2d
# ---------------------------------------------------------------------------


def direct_conv(x, w, stride, pads, dilation, groups):
    """Slow textbook convolution (NCHW, OIHW, zero padding), any numeric dtype."""
    (sh, sw), (top, left, bottom, right), (dh, dw) = stride, pads, dilation
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    n, c, h, width = x.shape
    o, cg, kh, kw = w.shape
    og = o // groups
    oh = (h - dh * (kh - 1) - 1) // sh + 1
    ow = (width - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, o, oh, ow), dtype=np.result_type(x, w))
    for oc in range(o):
        g = oc // og
        for i in range(oh):
            for j in range(ow):
                patch = x[:, g * cg : (g + 1) * cg, i * sh : i * sh + dh * (kh - 1) + 1 : dh, j * sw : j * sw + dw * (kw - 1) + 1 : dw]
                out[:, oc, i, j] = np.sum(patch * w[oc], axis=(1, 2, 3))
    return out


CONV_CASES = [
    # (N, C, H, W), (O, kh, kw), stride, padding, dilation, groups
    ((2, 3, 7, 6), (4, 3, 3), 1, 0, 1, 1),
    ((1, 4, 9, 8), (6, 3, 2), (2, 1), (1, 2), 1, 2),
    ((2, 6, 8, 8), (6, 3, 3), 1, 1, 1, 6),  # depthwise
    ((1, 4, 10, 9), (8, 3, 3), 2, (0, 1, 2, 1), (2, 1), 4),  # depthwise multiplier 2, asymmetric pad
    ((1, 2, 12, 11), (3, 3, 3), (1, 2), 2, 2, 1),
    ((2, 8, 5, 5), (4, 1, 1), 1, 0, 1, 2),
]


@pytest.mark.parametrize("x_shape, w_spec, stride, padding, dilation, groups", CONV_CASES)
def test_qconv2d_matches_direct_conv(x_shape, w_spec, stride, padding, dilation, groups):
    rng = np.random.default_rng(sum(x_shape) + groups)
    o, kh, kw = w_spec
    w_shape = (o, x_shape[1] // groups, kh, kw)
    x_q = rng.integers(0, 256, size=x_shape, dtype=np.uint8)
    w_q = rng.integers(-127, 128, size=w_shape, dtype=np.int8)
    x_zp, x_scale = 117, 0.02
    w_zp = rng.integers(-3, 4, size=o)
    w_scale = rng.uniform(0.001, 0.01, size=o)

    acc = qconv2d(x_q, x_zp, w_q, w_zp, stride, padding, dilation, groups)
    assert acc.dtype == np.int64

    pads = (padding,) * 4 if np.isscalar(padding) else tuple(padding) * (2 if len(padding) == 2 else 1)
    pair = lambda v: (v, v) if np.isscalar(v) else tuple(v)  # noqa: E731
    x_int = x_q.astype(np.int64) - x_zp
    w_int = w_q.astype(np.int64) - w_zp[:, None, None, None]
    expected = direct_conv(x_int, w_int, pair(stride), pads, pair(dilation), groups)
    np.testing.assert_array_equal(acc, expected)

    # The accumulator times the scales is the float conv of the dequantized tensors.
    x_float = dequantize(x_q, x_scale, x_zp).astype(np.float64)
    w_float = (w_q.astype(np.float64) - w_zp[:, None, None, None]) * w_scale[:, None, None, None]
    float_out = direct_conv(x_float, w_float, pair(stride), pads, pair(dilation), groups)
    real = acc * np.float32(x_scale).astype(np.float64) * w_scale[None, :, None, None]
    # float32 dequantization rounds each input by ~6e-8 relative; sums can cancel.
    np.testing.assert_allclose(real, float_out, rtol=1e-6, atol=1e-6 * np.abs(float_out).max())


def test_qconv2d_padding_acts_as_zero_point():
    x_q = np.full((1, 1, 3, 3), 50, dtype=np.uint8)
    w_q = np.ones((1, 1, 3, 3), dtype=np.int8)
    acc = qconv2d(x_q, 50, w_q, 0, padding=1)
    assert np.all(acc == 0)


def test_qconv2d_int32_accumulator_checks_overflow():
    x_q = np.full((1, 1, 2, 2), 255, dtype=np.uint8)
    w_q = np.full((1, 1, 2, 2), -128, dtype=np.int8)
    assert qconv2d(x_q, 0, w_q, 0, acc_dtype="int32").dtype == np.int32
    big_x = np.full((1, 1, 2, 2), 32767, dtype=np.int16)
    big_w = np.full((1, 1, 2, 2), 32767, dtype=np.int16)
    with pytest.raises(OverflowError, match="int32"):
        qconv2d(big_x, -32768, big_w, -32768, acc_dtype="int32")


def test_qconv2d_rejects_bad_groups():
    with pytest.raises(ValueError, match="groups"):
        qconv2d(np.zeros((1, 4, 3, 3), np.int8), 0, np.zeros((4, 3, 1, 1), np.int8), 0, groups=2)


# ---------------------------------------------------------------------------
# qmatmul
# ---------------------------------------------------------------------------


def test_qmatmul_matches_integer_matmul_with_broadcasting():
    rng = np.random.default_rng(5)
    a_q = rng.integers(-128, 128, size=(2, 3, 5, 7), dtype=np.int8)
    b_q = rng.integers(-128, 128, size=(3, 7, 4), dtype=np.int8)
    b_zp = np.array([0, 1, -2, 3])
    acc = qmatmul(a_q, -5, b_q, b_zp)
    expected = np.matmul(a_q.astype(np.int64) + 5, b_q.astype(np.int64) - b_zp)
    np.testing.assert_array_equal(acc, expected)
    assert acc.shape == (2, 3, 5, 4)


def test_qmatmul_int16_needs_int64():
    a = np.full((1, 4), 32767, dtype=np.int16)
    b = np.full((4, 1), 32767, dtype=np.int16)
    assert qmatmul(a, 0, b, 0)[0, 0] == 4 * 32767**2
    with pytest.raises(OverflowError):
        qmatmul(a, 0, b, 0, acc_dtype="int32")


def test_requantize_is_the_fixed_point_rule():
    assert requantize is fixed_point.requantize


# ---------------------------------------------------------------------------
# add_requantized
# ---------------------------------------------------------------------------


def float_add(a_q, a_scale, a_zp, b_q, b_scale, b_zp, out_scale, out_zp, dtype):
    qmin, qmax = fixed_point.qrange(dtype)
    real = (a_q.astype(np.float64) - a_zp) * a_scale + (b_q.astype(np.float64) - b_zp) * b_scale
    return np.clip(np.rint(real / out_scale) + out_zp, qmin, qmax)


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16"])
def test_add_requantized_within_one_lsb_of_float(dtype):
    rng = np.random.default_rng(6)
    qmin, qmax = fixed_point.qrange(dtype)
    worst = 0
    for _ in range(30):
        a_q = rng.integers(qmin, qmax + 1, size=2000).astype(dtype)
        b_q = rng.integers(qmin, qmax + 1, size=2000).astype(dtype)
        a_scale, b_scale, out_scale = 10.0 ** rng.uniform(-3, -1, size=3)
        a_zp, b_zp, out_zp = (int(z) for z in rng.integers(qmin // 2, qmax // 2, size=3))
        args = (a_q, a_scale, a_zp, b_q, b_scale, b_zp, out_scale, out_zp, dtype)
        got = add_requantized(*args)
        assert got.dtype == np.dtype(dtype)
        worst = max(worst, int(np.max(np.abs(got.astype(np.int64) - float_add(*args)))))
    assert worst <= 1


def test_add_requantized_equal_scales_is_exact_sum():
    a = np.array([-100, -3, 0, 5, 60, 100], dtype=np.int8)
    b = np.array([-100, 2, 0, -5, 60, 20], dtype=np.int8)
    got = add_requantized(a, 0.1, 0, b, 0.1, 0, 0.1, 0, "int8")
    assert got.tolist() == [-128, -1, 0, 0, 120, 120]


def test_add_left_shift():
    assert add_left_shift("int8") == add_left_shift("uint8") == 20
    assert add_left_shift("int16") == 15
    with pytest.raises(ValueError):
        add_left_shift("int32")
