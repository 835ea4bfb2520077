"""Tests for the fixed-point rounding rule and its overflow guards."""

from fractions import Fraction
import math

import numpy as np
import pytest

from qcompile.quantize.fixed_point import (
    MAX_SHIFT,
    acc_bound,
    check_no_overflow,
    multiplier_bits_for,
    qrange,
    quantize_multiplier,
    requantize,
)


def python_requantize(acc: int, multiplier: int, shift: int, zero_point: int, qmin: int, qmax: int) -> int:
    """The documented rule in unbounded Python ints (>> on ints is floor division)."""
    y = ((acc * multiplier + (1 << (shift - 1))) >> shift) + zero_point
    return min(max(y, qmin), qmax)


# ---------------------------------------------------------------------------
# qrange
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype, expected",
    [
        ("int8", (-128, 127)),
        ("uint8", (0, 255)),
        ("int16", (-32768, 32767)),
        ("uint16", (0, 65535)),
        ("int32", (-(2**31), 2**31 - 1)),
        (np.int8, (-128, 127)),
    ],
)
def test_qrange(dtype, expected):
    assert qrange(dtype) == expected


def test_qrange_rejects_unknown_dtype():
    with pytest.raises(ValueError, match="int4"):
        qrange("int4")


# ---------------------------------------------------------------------------
# quantize_multiplier
# ---------------------------------------------------------------------------


def test_quantize_multiplier_round_trip_many_scales():
    rng = np.random.default_rng(0)
    scales = 10.0 ** rng.uniform(-8, 3, size=5000)
    multiplier, shift = quantize_multiplier(scales)
    assert multiplier.dtype == np.int64 and shift.dtype == np.int64
    assert multiplier.shape == scales.shape
    assert np.all((multiplier >= 2**30) & (multiplier < 2**31))
    assert np.all((shift >= 1) & (shift <= MAX_SHIFT))
    for real, m, s in zip(scales[:500], multiplier[:500], shift[:500]):
        error = abs(Fraction(int(m), 2 ** int(s)) - Fraction(float(real)))
        assert error <= Fraction(float(real)) * Fraction(1, 2**31)
    approx = np.ldexp(multiplier.astype(np.float64), -shift)
    assert np.all(np.abs(approx - scales) <= scales * 2.0**-31)


def test_quantize_multiplier_scalar_returns_ints():
    multiplier, shift = quantize_multiplier(0.25)
    assert (type(multiplier), type(shift)) == (int, int)
    assert (multiplier, shift) == (2**30, 32)


@pytest.mark.parametrize("bits", [8, 16, 24])
def test_quantize_multiplier_fewer_bits(bits):
    scales = 10.0 ** np.random.default_rng(bits).uniform(-6, 2, size=1000)
    multiplier, shift = quantize_multiplier(scales, bits=bits)
    assert np.all((multiplier >= 2 ** (bits - 1)) & (multiplier < 2**bits))
    approx = np.ldexp(multiplier.astype(np.float64), -shift)
    assert np.all(np.abs(approx - scales) <= scales * 2.0**-bits)


def test_quantize_multiplier_rounding_carry_renormalizes():
    just_below_one = 1.0 - 2.0**-40  # mantissa rounds up to 2**31
    multiplier, shift = quantize_multiplier(just_below_one)
    assert (multiplier, shift) == (2**30, 30)


def test_quantize_multiplier_dead_channel():
    multiplier, shift = quantize_multiplier(np.array([0.5, 0.0]))
    assert multiplier.tolist() == [2**30, 0] and shift.tolist() == [31, 1]
    assert quantize_multiplier(0.0) == (0, 1)


def test_quantize_multiplier_tiny_scale_is_denormalized_at_max_shift():
    multiplier, shift = quantize_multiplier(1e-13)
    assert shift == MAX_SHIFT
    assert multiplier < 2**30
    assert abs(multiplier * 2.0**-MAX_SHIFT - 1e-13) <= 2.0**-63


@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf")])
def test_quantize_multiplier_rejects_bad_scales(bad):
    with pytest.raises(ValueError, match="finite"):
        quantize_multiplier(np.array([0.5, bad]))


def test_quantize_multiplier_rejects_too_large_scale():
    with pytest.raises(ValueError, match="too large"):
        quantize_multiplier(2.0**30)
    with pytest.raises(ValueError, match="too large"):
        quantize_multiplier(200.0, bits=8)
    assert quantize_multiplier(100.0, bits=8)[1] == 1


# ---------------------------------------------------------------------------
# requantize
# ---------------------------------------------------------------------------

HALF = (2**30, 31)  # exactly 0.5


def test_requantize_ties_round_half_up():
    acc = np.array([5, 3, 1, -1, -3, -5, 7, -7], dtype=np.int32)
    # acc * 0.5 = 2.5, 1.5, 0.5, -0.5, -1.5, -2.5, 3.5, -3.5
    y = requantize(acc, *HALF, zero_point=0, qmin=-128, qmax=127)
    assert y.tolist() == [3, 2, 1, 0, -1, -2, 4, -3]


def test_requantize_ties_with_quarter_scale():
    acc = np.array([2, 6, -2, -6, 1, -1, 3, -3])
    # acc * 0.25 = 0.5, 1.5, -0.5, -1.5, 0.25, -0.25, 0.75, -0.75
    y = requantize(acc, 2**30, 32, 0, -128, 127)
    assert y.tolist() == [1, 2, 0, -1, 0, 0, 1, -1]


def test_requantize_adds_zero_point_and_saturates():
    acc = np.array([0, 1000, -1000, 10, -10])
    y = requantize(acc, *HALF, zero_point=10, qmin=0, qmax=255)
    assert y.tolist() == [10, 255, 0, 15, 5]
    y = requantize(acc, *HALF, zero_point=-3, qmin=-128, qmax=127)
    assert y.tolist() == [-3, 127, -128, 2, -8]


def test_requantize_negative_values_match_python_ints():
    rng = np.random.default_rng(1)
    acc = rng.integers(-(2**31), 2**31, size=300)
    multiplier, shift = quantize_multiplier(10.0 ** rng.uniform(-9, -2, size=300))
    expected = [python_requantize(int(a), int(m), int(s), 7, -32768, 32767) for a, m, s in zip(acc, multiplier, shift)]
    got = [int(requantize(np.array([a]), m, s, 7, -32768, 32767, axis=0)[0]) for a, m, s in zip(acc, multiplier, shift)]
    assert got == expected


def test_requantize_per_channel_along_axis_1():
    rng = np.random.default_rng(2)
    acc = rng.integers(-50000, 50000, size=(2, 3, 4, 5), dtype=np.int32)
    multiplier, shift = quantize_multiplier(np.array([0.001, 0.0005, 0.003]))
    zero_point = np.array([0, 5, -5])
    y = requantize(acc, multiplier, shift, zero_point, -128, 127, axis=1)
    for c in range(3):
        expected = requantize(acc[:, c], int(multiplier[c]), int(shift[c]), int(zero_point[c]), -128, 127)
        np.testing.assert_array_equal(y[:, c], expected)


def test_requantize_per_channel_along_last_axis():
    rng = np.random.default_rng(3)
    acc = rng.integers(-(2**20), 2**20, size=(2, 6, 4), dtype=np.int64)
    multiplier, shift = quantize_multiplier(10.0 ** rng.uniform(-5, -3, size=4))
    y = requantize(acc, multiplier, shift, 0, -128, 127, axis=-1)
    for n in range(4):
        expected = [python_requantize(int(a), int(multiplier[n]), int(shift[n]), 0, -128, 127) for a in acc[..., n].ravel()]
        assert y[..., n].ravel().tolist() == expected


def test_requantize_rejects_mismatched_channels():
    with pytest.raises(ValueError, match="per-channel"):
        requantize(np.zeros((1, 3, 2, 2), np.int32), np.array([2**30, 2**30]), np.array([31, 31]), 0, -128, 127)


def test_requantize_matches_exact_real_arithmetic():
    """floor(acc * real + 1/2) computed exactly with Fractions, away from ties."""
    rng = np.random.default_rng(4)
    checked = 0
    for _ in range(400):
        real = float(10.0 ** rng.uniform(-7, -1))
        acc = int(rng.integers(-(2**31), 2**31))
        multiplier, shift = quantize_multiplier(real)
        exact = Fraction(acc) * Fraction(real)
        distance_to_tie = abs(exact - math.floor(exact) - Fraction(1, 2))
        if distance_to_tie <= abs(exact) * Fraction(1, 2**30):
            continue  # the 2**-31 multiplier error could legitimately flip this one
        expected = math.floor(exact + Fraction(1, 2))
        expected = min(max(expected, -(2**31)), 2**31 - 1)
        got = int(requantize(np.array([acc], dtype=np.int64), multiplier, shift, 0, -(2**31), 2**31 - 1)[0])
        assert got == expected, (acc, real)
        checked += 1
    assert checked > 350


def test_requantize_refuses_int64_overflow():
    acc = np.array([2**40], dtype=np.int64)
    with pytest.raises(OverflowError, match="2\\*\\*63"):
        requantize(acc, 2**30, 31, 0, -128, 127)


def test_requantize_rejects_float_accumulators():
    with pytest.raises(TypeError):
        requantize(np.array([1.5]), *HALF, 0, -128, 127)


# ---------------------------------------------------------------------------
# overflow guards
# ---------------------------------------------------------------------------


def test_acc_bound_values():
    assert acc_bound(10, "int8", "int8") == 10 * 255 * 255
    assert acc_bound(10, "int8", "int8", a_zero_point=0, w_zero_point=0) == 10 * 128 * 128
    assert acc_bound(3, "uint8", "int8", a_zero_point=np.array([0, 200]), w_zero_point=0) == 3 * 255 * 128


def test_int16_with_int32_accumulator_raises():
    with pytest.raises(ValueError) as info:
        check_no_overflow(64, "int16", "int16", "int32")
    message = str(info.value)
    assert "k=64" in message and "int32" in message and str(64 * 65535 * 65535) in message


def test_int16_symmetric_overflows_from_k_2():
    assert check_no_overflow(1, "int16", "int16", "int32", a_zero_point=0, w_zero_point=0) == 2**30
    with pytest.raises(ValueError, match="k=2"):
        check_no_overflow(2, "int16", "int16", "int32", a_zero_point=0, w_zero_point=0)


def test_int8_and_int64_accumulators_fit():
    assert check_no_overflow(4096, "int8", "int8", "int32") == 4096 * 255 * 255
    assert check_no_overflow(4096, "uint8", "int8", "int32", w_zero_point=0) == 4096 * 255 * 128
    assert check_no_overflow(64, "int16", "int16", "int64") == 64 * 65535**2


def test_multiplier_bits_full_for_any_int32_accumulator():
    assert multiplier_bits_for(2**31 - 1) == 31
    assert multiplier_bits_for(2**31) == 31


@pytest.mark.parametrize("k", [1, 64, 4096, 2**20])
def test_multiplier_bits_reduced_for_int16_and_safe(k):
    bound = acc_bound(k, "int16", "int16")
    bits = multiplier_bits_for(bound)
    assert bits < 31
    biggest = (1 << bits) - 1
    assert bound * biggest + 2**61 < 2**63
    assert bound * ((1 << (bits + 1)) - 1) + 2**61 >= 2**63  # the largest that fits
    acc = np.array([bound, -bound, bound - 1], dtype=np.int64)
    got = requantize(acc, biggest, MAX_SHIFT, 0, -(2**31), 2**31 - 1, axis=0)
    assert got.tolist() == [python_requantize(int(a), biggest, MAX_SHIFT, 0, -(2**31), 2**31 - 1) for a in acc]


def test_multiplier_bits_for_impossible_bound():
    with pytest.raises(ValueError):
        multiplier_bits_for(2**63)
