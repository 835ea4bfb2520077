"""Tests for calibration observers, choose_qparams and weight_qparams."""

import time

import numpy as np
import pytest
from scipy.stats import entropy as scipy_kl

from qcompile.errors import CalibrationError, ConfigError
from qcompile.quantize.fixed_point import qrange
from qcompile.quantize.observers import (
    DEGENERATE_SCALE,
    MIN_SCALE,
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    _kl_divergences,
    choose_qparams,
    make_observer,
    weight_qparams,
    weight_quantization_error,
)
from qcompile.quantize.reference import dequantize, quantize


def heavy_tailed(seed=0, n=100_000):
    """Laplace bulk plus a handful of far outliers on both sides."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.laplace(0.0, 1.0, n), [40.0, -55.0, 70.0]]).astype(np.float32)


def feed(observer, x, batches=5):
    for part in np.array_split(x, batches):
        observer.update(part)
    return observer


# ---------------------------------------------------------------------------
# min / max observers
# ---------------------------------------------------------------------------


def test_minmax_is_exact():
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(4, 8)) * (i + 1) for i in range(5)]
    observer = MinMaxObserver()
    for b in batches:
        observer.update(b)
    assert observer.num_updates == 5
    assert observer.compute_range() == (min(b.min() for b in batches), max(b.max() for b in batches))


def test_ranges_always_contain_zero():
    observer = MinMaxObserver()
    observer.update(np.array([2.0, 5.0]))
    assert observer.compute_range() == (0.0, 5.0)
    observer = MinMaxObserver()
    observer.update(np.array([-7.0, -1.0]))
    assert observer.compute_range() == (-7.0, 0.0)


def test_moving_average_semantics():
    observer = MovingAverageMinMaxObserver(averaging_constant=0.1)
    observer.update(np.array([-1.0, 2.0]))
    assert observer.compute_range() == (-1.0, 2.0)  # first batch initializes
    observer.update(np.array([-11.0, 12.0]))
    lo, hi = -1.0 + 0.1 * (-11.0 + 1.0), 2.0 + 0.1 * (12.0 - 2.0)
    assert observer.compute_range() == pytest.approx((lo, hi))
    observer.update(np.array([-1.0, 2.0]))
    assert observer.compute_range() == pytest.approx((lo + 0.1 * (-1.0 - lo), hi + 0.1 * (2.0 - hi)))


def test_moving_average_rejects_bad_constant():
    with pytest.raises(ValueError):
        MovingAverageMinMaxObserver(averaging_constant=0.0)


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("observer_cls", [MinMaxObserver, MovingAverageMinMaxObserver, HistogramObserver])
def test_non_finite_data_names_tensor_and_count(observer_cls):
    observer = observer_cls(name="conv1.out")
    x = np.ones(10, dtype=np.float32)
    x[[1, 4]] = np.nan
    x[7] = np.inf
    with pytest.raises(CalibrationError, match=r"conv1\.out.*3 non-finite"):
        observer.update(x)
    assert observer.num_updates == 0


def test_empty_batch_and_no_data_raise():
    observer = HistogramObserver(name="x")
    with pytest.raises(CalibrationError, match="empty"):
        observer.update(np.zeros((0, 3)))
    with pytest.raises(CalibrationError, match="'x'"):
        observer.compute_range()


# ---------------------------------------------------------------------------
# histogram observer
# ---------------------------------------------------------------------------


def test_histogram_rebinning_preserves_counts_and_bins():
    rng = np.random.default_rng(1)
    batches = [rng.normal(size=1000) * scale for scale in (0.1, 1.0, 0.5, 7.3, 30.0)]
    observer = HistogramObserver(bins=256)
    for b in batches:
        observer.update(b)
    everything = np.concatenate(batches)
    counts, edges = observer.abs_histogram()
    assert counts.size == 256
    assert observer.total_count == counts.sum() == everything.size
    assert edges[-1] >= np.abs(everything).max()
    # integer-factor merging is exact: identical to binning all data at once
    reference, _ = np.histogram(np.abs(everything), bins=edges)
    assert np.abs(counts - reference).sum() <= 2
    signed, signed_edges = observer.signed_histogram()
    assert signed.sum() == everything.size and signed_edges.size == 513
    assert signed[:256].sum() == np.count_nonzero(everything < 0)


def test_histogram_handles_all_zero_batches_first():
    observer = HistogramObserver(bins=64, method="percentile")
    observer.update(np.zeros(100))
    assert observer.compute_range() == (0.0, 0.0)
    observer.update(np.array([1.0, 2.0]))
    assert observer.total_count == 102
    assert observer.abs_histogram()[0][0] == 100


def test_percentile_clips_outlier_symmetric():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.uniform(-1, 1, 100_000), [100.0]])
    observer = feed(HistogramObserver(method="percentile", percentile=99.9), x)
    lo, hi = observer.compute_range()
    bin_width = observer.abs_histogram()[1][1]  # ~0.05: the outlier stretched the grid
    assert lo == pytest.approx(x.min())  # clamped to the data, which is inside -t
    assert 0.999 - bin_width <= hi <= 0.999 + bin_width


def test_percentile_asymmetric_clips_both_tails():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(2.0, 1.0, 200_000), [-50.0, 60.0]])
    observer = feed(HistogramObserver(method="percentile", percentile=99.0, symmetric=False), x)
    lo, hi = observer.compute_range()
    assert lo == pytest.approx(np.percentile(x, 1.0), abs=0.05)
    assert hi == pytest.approx(np.percentile(x, 99.0), abs=0.05)


@pytest.mark.parametrize("method", ["entropy", "mse"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_entropy_and_mse_clip_heavy_tails(method, symmetric):
    x = heavy_tailed()
    lo, hi = feed(HistogramObserver(method=method, symmetric=symmetric), x).compute_range()
    p90 = np.percentile(np.abs(x), 90)
    assert lo <= 0 <= hi
    assert max(-lo, hi) < np.abs(x).max() * 0.9
    assert hi > p90 and -lo > p90


def test_entropy_matches_mxnet_formulation():
    """Closed form vs a slow, literal port of MXNet's loop (with its smoothing)."""

    def smooth(p, eps=1e-4):
        zeros = p == 0
        return p + eps * zeros - eps * zeros.sum() / (~zeros).sum() * ~zeros

    def slow_kl(hist, levels):
        out = []
        for i in range(levels, hist.size + 1):
            sliced = hist[:i].astype(float)
            p = sliced.copy()
            p[-1] += hist[i:].sum()
            nonzero = p != 0
            m = i // levels
            q = np.zeros(i)
            for j in range(levels):
                start, stop = j * m, (i if j == levels - 1 else (j + 1) * m)
                if nonzero[start:stop].sum():
                    q[start:stop] = sliced[start:stop].sum() / nonzero[start:stop].sum()
            q[~nonzero] = 0
            out.append(scipy_kl(smooth(p), smooth(q)) if q.any() else np.inf)
        return np.array(out)

    rng = np.random.default_rng(4)
    for trial in range(4):
        x = np.abs(rng.laplace(0, 1, 5000))
        if trial % 2:
            x = np.concatenate([x, [30.0, 45.0]])
        hist, _ = np.histogram(x, bins=200, range=(0, x.max() * (1 + 0.4 * trial)))
        fast = _kl_divergences(hist.astype(float), np.arange(16, 201), 16)
        slow = slow_kl(hist, 16)
        assert np.argmin(fast) == np.argmin(slow)
        np.testing.assert_allclose(fast, slow, atol=1e-4)


def test_entropy_is_fast_for_2048_bins():
    observer = HistogramObserver(bins=2048, method="entropy")
    observer.update(heavy_tailed(seed=5, n=200_000))
    start = time.perf_counter()
    observer.compute_range()
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("method", ["percentile", "entropy", "mse"])
def test_relu_activations_give_lo_zero(method):
    x = np.maximum(heavy_tailed(seed=6), 0.0)
    for symmetric, dtype in [(False, "uint8"), (True, "uint8"), (True, "int8"), (False, "int8")]:
        lo, hi = feed(HistogramObserver(method=method, symmetric=symmetric, dtype=dtype), x).compute_range()
        assert lo == 0.0 and 0.0 < hi <= x.max()


@pytest.mark.parametrize("method", ["percentile", "entropy", "mse"])
def test_positive_only_data_range_includes_zero(method):
    x = np.random.default_rng(7).uniform(2.0, 5.0, 10_000)
    observer = HistogramObserver(method=method, symmetric=False)
    observer.update(x)
    lo, hi = observer.compute_range()
    assert lo == 0.0 and 2.0 < hi <= 5.0


def test_histogram_observer_rejects_bad_arguments():
    with pytest.raises(ConfigError, match="percentile, entropy, mse"):
        HistogramObserver(method="kl")
    with pytest.raises(ValueError):
        HistogramObserver(percentile=0.0)
    with pytest.raises(ValueError):
        HistogramObserver(dtype="float16")


# ---------------------------------------------------------------------------
# factory
# ---------------------------------------------------------------------------


def test_make_observer_builds_each_method():
    assert type(make_observer("minmax")) is MinMaxObserver
    assert make_observer("moving_average", averaging_constant=0.5).averaging_constant == 0.5
    for method in ("percentile", "entropy", "mse"):
        observer = make_observer(method, bins=512, dtype="int16", name="t")
        assert isinstance(observer, HistogramObserver)
        assert (observer.method, observer.bins, observer.dtype, observer.name) == (method, 512, "int16", "t")


def test_make_observer_unknown_method_lists_valid_names():
    with pytest.raises(ConfigError) as info:
        make_observer("kl_divergence")
    for name in ("minmax", "moving_average", "percentile", "entropy", "mse"):
        assert name in str(info.value)


def test_make_observer_unknown_parameter():
    with pytest.raises(ConfigError, match="bins"):
        make_observer("minmax", bins=10)


# ---------------------------------------------------------------------------
# choose_qparams
# ---------------------------------------------------------------------------

DTYPES = ["int8", "uint8", "int16", "uint16"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("symmetric", [True, False])
def test_choose_qparams_invariants(dtype, symmetric):
    rng = np.random.default_rng(8)
    qmin, qmax = qrange(dtype)
    for _ in range(200):
        lo, hi = np.sort(rng.normal(size=2) * 10.0 ** rng.uniform(-3, 3))
        if rng.random() < 0.2:
            lo, hi = 0.0, abs(hi)
        scale, zero_point = choose_qparams(lo, hi, dtype, symmetric)
        assert isinstance(scale, float) and isinstance(zero_point, int)
        assert scale > 0 and np.float32(scale) == scale
        assert qmin <= zero_point <= qmax
        assert dequantize(np.array([zero_point]), scale, zero_point)[0] == 0.0
        lo0, hi0 = min(lo, 0.0), max(hi, 0.0)
        codes = quantize(np.array([lo0, hi0], np.float32), scale, zero_point, dtype).astype(np.int64)
        restored = (codes - zero_point) * scale
        assert abs(restored[0] - lo0) <= scale * 1.001 and abs(restored[1] - hi0) <= scale * 1.001
        if symmetric and qmin < 0:
            assert zero_point == 0


def test_choose_qparams_unsigned_symmetric():
    assert choose_qparams(0.0, 2.55, "uint8", symmetric=True) == (float(np.float32(0.01)), 0)
    scale, zero_point = choose_qparams(-1.27, 0.5, "uint8", symmetric=True)
    assert zero_point == 128 and scale == float(np.float32(0.01))


def test_choose_qparams_asymmetric_formula():
    scale, zero_point = choose_qparams(-1.0, 3.0, "uint8", symmetric=False)
    assert scale == float(np.float32(4.0 / 255))
    assert zero_point == round(1.0 / scale) == 64


def test_choose_qparams_degenerate_ranges():
    for dtype in DTYPES:
        for symmetric in (True, False):
            scale, zero_point = choose_qparams(0.0, 0.0, dtype, symmetric)
            assert scale == DEGENERATE_SCALE
            assert quantize(np.array([0.0]), scale, zero_point, dtype)[0] == zero_point
    assert choose_qparams(0.0, 1e-12, "int8", True)[0] == pytest.approx(MIN_SCALE)
    with pytest.raises(ValueError):
        choose_qparams(1.0, -1.0, "int8", True)
    with pytest.raises(ValueError):
        choose_qparams(float("nan"), 1.0, "int8", True)


# ---------------------------------------------------------------------------
# weight_qparams
# ---------------------------------------------------------------------------


def test_weight_qparams_per_channel_shapes():
    w = np.random.default_rng(9).normal(size=(8, 4, 3, 3)).astype(np.float32)
    scale, zero_point = weight_qparams(w, axis=0)
    assert scale.shape == zero_point.shape == (8,)
    assert scale.dtype == np.float32 and zero_point.dtype == np.int32
    matmul_w = w.reshape(8, 36).T  # (K, N): channels on the last axis
    assert weight_qparams(matmul_w, axis=-1)[0].shape == (8,)
    assert weight_qparams(matmul_w, axis=1)[0].shape == (8,)
    scale, zero_point = weight_qparams(w, axis=None)
    assert scale.shape == zero_point.shape == ()


def test_weight_qparams_restricted_symmetric_range():
    w = np.random.default_rng(10).normal(size=(6, 50)).astype(np.float32)
    w[0] = -np.abs(w[0])  # all-negative channel must still avoid -128
    scale, zero_point = weight_qparams(w, axis=0, dtype="int8")
    assert np.all(zero_point == 0)
    np.testing.assert_array_equal(scale, (np.abs(w).max(axis=1) / 127).astype(np.float32))
    q = quantize(w, scale, zero_point, "int8", axis=0, narrow_range=True)
    assert q.min() >= -127
    assert np.all(np.abs(q).max(axis=1) == 127)


def test_weight_qparams_asymmetric_represent_zero():
    w = np.random.default_rng(11).uniform(-0.2, 1.0, size=(5, 40)).astype(np.float32)
    scale, zero_point = weight_qparams(w, axis=0, dtype="uint8", symmetric=False)
    assert np.all((zero_point >= 0) & (zero_point <= 255))
    assert np.all(dequantize(zero_point, scale, zero_point, axis=0) == 0.0)


def test_weight_qparams_dead_channel_takes_live_median():
    w = np.random.default_rng(12).normal(size=(5, 20)).astype(np.float32)
    w[2] = 0.0
    scale, _ = weight_qparams(w, axis=0)
    live = np.delete(scale, 2)
    assert scale[2] == np.float32(np.median(live))
    assert weight_qparams(np.zeros((3, 3)), axis=0)[0].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("symmetric, dtype", [(True, "int8"), (False, "uint8"), (True, "int16")])
def test_weight_mse_never_worse_than_max(symmetric, dtype):
    rng = np.random.default_rng(13)
    w = rng.laplace(size=(16, 8, 3, 3)).astype(np.float32)
    w[:4] = rng.standard_t(df=1.5, size=(4, 8, 3, 3))  # heavy-tailed channels
    max_params = weight_qparams(w, axis=0, dtype=dtype, method="max", symmetric=symmetric)
    mse_params = weight_qparams(w, axis=0, dtype=dtype, method="mse", symmetric=symmetric)
    max_error = weight_quantization_error(w, *max_params, axis=0, dtype=dtype, symmetric=symmetric)
    mse_error = weight_quantization_error(w, *mse_params, axis=0, dtype=dtype, symmetric=symmetric)
    assert np.all(mse_error <= max_error)


@pytest.mark.parametrize("symmetric, dtype", [(True, "int8"), (False, "uint8")])
def test_weight_mse_clips_a_lone_outlier_in_a_large_channel(symmetric, dtype):
    """50k values in [-1, 1] plus one at 1.5: clipping near 1.1 saves more rounding noise than it costs."""
    rng = np.random.default_rng(14)
    w = rng.uniform(-1.0, 1.0, size=(3, 50_000)).astype(np.float32)
    w[:2, 0] = 1.5
    max_params = weight_qparams(w, axis=0, dtype=dtype, method="max", symmetric=symmetric)
    mse_params = weight_qparams(w, axis=0, dtype=dtype, method="mse", symmetric=symmetric)
    max_error = weight_quantization_error(w, *max_params, axis=0, dtype=dtype, symmetric=symmetric)
    mse_error = weight_quantization_error(w, *mse_params, axis=0, dtype=dtype, symmetric=symmetric)
    assert np.all(mse_error[:2] < 0.97 * max_error[:2])
    assert np.all(mse_params[0][:2] < max_params[0][:2])
    assert mse_error[2] <= max_error[2]


def test_weight_qparams_errors():
    with pytest.raises(ConfigError, match="max, mse"):
        weight_qparams(np.ones((2, 2)), method="entropy")
    with pytest.raises(CalibrationError, match="1 non-finite"):
        weight_qparams(np.array([[1.0, np.nan]]))
