"""Calibration observers and the choice of scales / zero points.

Observers watch activation batches during calibration and keep *bounded*
memory: running min/max or a fixed-size histogram, never the activations.
``compute_range()`` always returns ``lo <= 0 <= hi`` because zero (padding,
ReLU output, zero-initialized state) must be exactly representable.

Histogram layout
    ``HistogramObserver`` keeps two ``bins``-bin histograms of magnitudes on
    a shared grid ``[0, amax]``: one for ``x >= 0`` and one for ``-x`` with
    ``x < 0``.  Together they form a signed histogram over ``[-amax, amax]``
    with 0 on a bin edge, and their sum is the ``|x|`` histogram (TensorRT's
    entropy input) with no re-binning error.

Growing range
    When a batch exceeds ``amax``, the grid widens by the smallest *integer*
    factor ``f`` with ``f * amax >= max|x|`` and every ``f`` old bins merge
    into one new bin (``bins`` stays fixed).  Counts stay exact integers: no
    count is split between bins, so unlike fractional re-binning there is no
    smearing error.  The price is resolution: right after a growth the data
    may fill only about ``1/f`` of the grid (at worst about half of it when
    the range grows by a hair).  Feed a representative first batch, or more
    bins, if that matters.

Range methods (``HistogramObserver(method=...)``)
    percentile  clip at the ``percentile`` of ``|x|`` (symmetric) or at the
                ``100 - p`` / ``p`` percentiles of ``x`` (asymmetric: each tail
                loses ``100 - p`` percent), interpolated inside a bin.
    entropy     TensorRT / ORT KL-divergence calibration on the ``|x|``
                histogram (see ``_kl_threshold_bin``); the threshold ``t``
                gives ``(max(min, -t), min(max, t))``.  The number of levels is
                128 for int8 (256 when the range is one-sided and all codes
                are used), 2**(bits-1) generally, capped at ``bins // 2``: a
                2048-bin histogram cannot resolve 16-bit steps, so for 16-bit
                it clips as if for ~11 bits (prefer mse/percentile there).
    mse         minimizes expected squared error: uniform rounding noise
                ``step**2 / 12`` per value inside the range plus the squared
                clipping error of values outside it, from the histogram.
                Exact zeros are excluded from the noise (they are exact).
                Symmetric searches ``t``; asymmetric searches ``(lo, hi)``
                jointly on a grid of at most 512 x 512 bin edges.
"""

from __future__ import annotations

import inspect

import numpy as np

from qcompile.errors import CalibrationError, ConfigError

from .fixed_point import is_signed, num_bits, qrange
from .reference import dequantize, quantize

MIN_SCALE = float(np.finfo(np.float32).eps)
"""Smallest scale returned for a non-empty range (same floor as PyTorch).

Smaller scales turn into enormous requantization multipliers downstream;
values below ``MIN_SCALE / 2`` then simply quantize to zero.
"""

DEGENERATE_SCALE = 1.0
"""Scale for an all-zero range: any scale represents 0 exactly, and 1.0 keeps
downstream multipliers ordinary (a tiny epsilon would blow them up)."""

WEIGHT_CLIP_RATIOS = np.concatenate([np.linspace(1.0, 0.5, 51), np.geomspace(0.5, 0.01, 41)[1:]])
"""Clip ratios tried by ``weight_qparams(method="mse")``: 1.0 first (ties keep plain
max), steps of 0.01 down to 0.5, then geometric steps of ~10% down to 0.01 for
heavy-tailed channels whose max is a lone outlier."""


# ---------------------------------------------------------------------------
# observers
# ---------------------------------------------------------------------------


class Observer:
    """Base class: validates batches, counts updates, guarantees ``lo <= 0 <= hi``."""

    def __init__(self, name: str | None = None):
        self.name = name
        self.num_updates = 0

    def update(self, x) -> None:
        """Fold one activation batch into the statistics."""
        values = self._validated(x)
        self._observe(values)
        self.num_updates += 1

    def compute_range(self) -> tuple[float, float]:
        """The calibrated ``(lo, hi)``, widened to contain 0."""
        if self.num_updates == 0:
            raise CalibrationError(f"no calibration data was observed{self._for_tensor()}")
        lo, hi = self._range()
        return min(float(lo), 0.0), max(float(hi), 0.0)

    def _observe(self, x: np.ndarray) -> None:
        raise NotImplementedError

    def _range(self) -> tuple[float, float]:
        raise NotImplementedError

    def _for_tensor(self) -> str:
        return f" for tensor '{self.name}'" if self.name else ""

    def _validated(self, x) -> np.ndarray:
        x = np.asarray(x)
        if x.size == 0:
            raise CalibrationError(f"empty calibration batch{self._for_tensor()}")
        if x.dtype == bool or not np.issubdtype(x.dtype, np.integer) and not np.issubdtype(x.dtype, np.floating):
            raise CalibrationError(f"calibration data{self._for_tensor()} must be real numbers, got dtype {x.dtype}")
        if np.issubdtype(x.dtype, np.floating):
            bad = x.size - int(np.count_nonzero(np.isfinite(x)))
            if bad:
                raise CalibrationError(
                    f"calibration data{self._for_tensor()} has {bad} non-finite value(s) (NaN/Inf) "
                    f"out of {x.size}"
                )
        return x


class MinMaxObserver(Observer):
    """Running global min and max: no clipping at all."""

    def __init__(self, name: str | None = None):
        super().__init__(name)
        self.min_val = self.max_val = 0.0

    def _observe(self, x: np.ndarray) -> None:
        lo, hi = float(x.min()), float(x.max())
        if self.num_updates == 0:
            self.min_val, self.max_val = lo, hi
        else:
            self.min_val, self.max_val = min(self.min_val, lo), max(self.max_val, hi)

    def _range(self) -> tuple[float, float]:
        return self.min_val, self.max_val


class MovingAverageMinMaxObserver(MinMaxObserver):
    """Exponential moving average of per-batch min/max (PyTorch semantics).

    The first batch initializes; later ones do ``v += c * (batch_v - v)``,
    which damps rare extreme batches.
    """

    def __init__(self, averaging_constant: float = 0.01, name: str | None = None):
        if not 0.0 < averaging_constant <= 1.0:
            raise ValueError(f"averaging_constant must be in (0, 1], got {averaging_constant}")
        super().__init__(name)
        self.averaging_constant = float(averaging_constant)

    def _observe(self, x: np.ndarray) -> None:
        lo, hi = float(x.min()), float(x.max())
        if self.num_updates == 0:
            self.min_val, self.max_val = lo, hi
            return
        c = self.averaging_constant
        self.min_val += c * (lo - self.min_val)
        self.max_val += c * (hi - self.max_val)


class HistogramObserver(Observer):
    """Fixed-size histogram with a growing range; see the module docstring."""

    METHODS = ("percentile", "entropy", "mse")

    def __init__(
        self,
        bins: int = 2048,
        method: str = "percentile",
        percentile: float = 99.99,
        symmetric: bool = True,
        dtype: str = "int8",
        name: str | None = None,
    ):
        if method not in self.METHODS:
            raise ConfigError(f"unknown histogram method '{method}'; valid: {', '.join(self.METHODS)}")
        if int(bins) < 8:
            raise ValueError(f"bins must be >= 8, got {bins}")
        if not 0.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        qrange(dtype)  # validates the dtype name early
        super().__init__(name)
        self.bins, self.method, self.percentile = int(bins), method, float(percentile)
        self.symmetric, self.dtype = bool(symmetric), dtype
        self.min_val = self.max_val = 0.0
        self._amax = 0.0
        self._pos = np.zeros(self.bins, dtype=np.int64)
        self._neg = np.zeros(self.bins, dtype=np.int64)
        self._zeros = 0

    # -- accumulation -------------------------------------------------------

    def _observe(self, x: np.ndarray) -> None:
        x = x.ravel()
        lo, hi = float(x.min()), float(x.max())
        first = self.num_updates == 0
        self.min_val = lo if first else min(self.min_val, lo)
        self.max_val = hi if first else max(self.max_val, hi)
        self._grow_to(max(-lo, hi))
        negative = x < 0
        self._zeros += int(np.count_nonzero(x == 0))
        self._pos += self._bin_counts(x[~negative])
        self._neg += self._bin_counts(-x[negative])

    def _bin_counts(self, magnitudes: np.ndarray) -> np.ndarray:
        if self._amax == 0.0:  # only zeros so far: they live in bin 0
            return np.bincount(np.zeros(magnitudes.size, dtype=np.int64), minlength=self.bins)
        index = (magnitudes.astype(np.float64) * (self.bins / self._amax)).astype(np.int64)
        return np.bincount(np.minimum(index, self.bins - 1), minlength=self.bins)

    def _grow_to(self, needed: float) -> None:
        """Widen the grid by an integer factor so old bins merge exactly."""
        if needed <= self._amax:
            return
        if self._amax == 0.0:
            self._amax = needed  # existing counts are zeros, still in bin 0
            return
        factor = int(np.ceil(needed / self._amax))
        self._pos = _merge_bins(self._pos, factor)
        self._neg = _merge_bins(self._neg, factor)
        self._amax *= factor

    # -- inspection ---------------------------------------------------------

    @property
    def total_count(self) -> int:
        return int(self._pos.sum() + self._neg.sum())

    def abs_histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """``(counts, edges)`` of ``|x|`` over ``[0, amax]`` (``bins`` bins)."""
        return self._pos + self._neg, np.linspace(0.0, self._amax, self.bins + 1)

    def signed_histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """``(counts, edges)`` of ``x`` over ``[-amax, amax]`` (``2 * bins`` bins, 0 is an edge)."""
        counts = np.concatenate([self._neg[::-1], self._pos])
        return counts, np.linspace(-self._amax, self._amax, 2 * self.bins + 1)

    # -- range selection ----------------------------------------------------

    def _range(self) -> tuple[float, float]:
        if self._amax == 0.0:
            return 0.0, 0.0
        chooser = {"percentile": self._percentile_range, "entropy": self._entropy_range, "mse": self._mse_range}
        lo, hi = chooser[self.method]()
        return max(lo, self.min_val), min(hi, self.max_val)

    def _percentile_range(self) -> tuple[float, float]:
        fraction = self.percentile / 100.0
        if self.symmetric:
            t = _histogram_quantile(*self.abs_histogram(), fraction)
            return -t, t
        counts, edges = self.signed_histogram()
        return _histogram_quantile(counts, edges, 1.0 - fraction), _histogram_quantile(counts, edges, fraction)

    def _entropy_range(self) -> tuple[float, float]:
        counts, _ = self.abs_histogram()
        levels = min(self._positive_levels(), self.bins // 2)
        t = _kl_threshold_bin(counts, levels) * self._bin_width
        return -t, t

    def _mse_range(self) -> tuple[float, float]:
        pos = self._pos.astype(np.float64)
        pos[0] -= self._zeros  # exact zeros carry no rounding or clipping error
        neg = self._neg.astype(np.float64)
        if self.symmetric:
            t = _best_symmetric_mse_bin(pos + neg, self._symmetric_steps()) * self._bin_width
            return -t, t
        qmin, qmax = qrange(self.dtype)
        a, b = _best_affine_mse_bins(neg, pos, qmax - qmin)
        return -a * self._bin_width, b * self._bin_width

    def candidate_ranges(self, percentiles=(99.9, 99.99)) -> dict[str, tuple[float, float]]:
        """Every method's range from this one histogram, each widened to contain 0:
        ``{"minmax": .., "percentile_99.99": .., "entropy": .., "mse": ..}`` (auto calibration picks one)."""
        if self.num_updates == 0:
            raise CalibrationError(f"no calibration data was observed{self._for_tensor()}")
        out = {"minmax": (self.min_val, self.max_val)}
        if self._amax > 0.0:
            saved = self.percentile
            try:
                for p in percentiles:
                    self.percentile = float(p)
                    out[f"percentile_{p:g}"] = self._percentile_range()
            finally:
                self.percentile = saved
            out["entropy"] = self._entropy_range()
            out["mse"] = self._mse_range()
        return {k: (min(max(float(lo), self.min_val), 0.0), max(min(float(hi), self.max_val), 0.0))
                for k, (lo, hi) in out.items()}

    @property
    def _bin_width(self) -> float:
        return self._amax / self.bins

    def _positive_levels(self) -> int:
        """Quantization levels available between 0 and the threshold (TensorRT uses 128 for int8)."""
        bits = num_bits(self.dtype)
        one_sided = self.min_val >= 0 and (not self.symmetric or not is_signed(self.dtype))
        return 2**bits if one_sided else 2 ** (bits - 1)

    def _symmetric_steps(self) -> int:
        """Quantization steps between 0 and ``t``, matching ``choose_qparams(symmetric=True)``."""
        return _symmetric_steps(self.dtype, has_negatives=self.min_val < 0)


def _merge_bins(counts: np.ndarray, factor: int) -> np.ndarray:
    """Merge every ``factor`` consecutive bins into one, keeping the bin count."""
    index = np.arange(counts.size) // min(factor, counts.size)
    return np.bincount(index, weights=counts, minlength=counts.size).astype(np.int64)


def _histogram_quantile(counts: np.ndarray, edges: np.ndarray, fraction: float) -> float:
    """Value below which ``fraction`` of the mass lies, linear inside a bin."""
    cumulative = np.cumsum(counts)
    target = fraction * cumulative[-1]
    b = min(int(np.searchsorted(cumulative, target, side="left")), counts.size - 1)
    before = cumulative[b] - counts[b]
    inside = (target - before) / counts[b] if counts[b] else 1.0
    return float(edges[b] + inside * (edges[b + 1] - edges[b]))


# ---------------------------------------------------------------------------
# entropy (KL divergence) calibration
# ---------------------------------------------------------------------------


def _kl_threshold_bin(counts: np.ndarray, levels: int) -> int:
    """TensorRT's entropy calibration: the bin edge ``i`` minimizing KL(P || Q).

    For each candidate ``i`` in ``[levels, bins]`` (threshold ``i`` bins):

    * P is ``hist[:i]`` with all mass beyond bin ``i`` folded into bin ``i-1``;
    * Q merges ``hist[:i]`` (without the folded outliers) into ``levels``
      groups of ``m = i // levels`` bins, the last group taking the remainder,
      and spreads each group's mass evenly over the bins where P is non-zero;
    * KL is taken between the normalized P and Q.

    This is the MXNet / ONNX Runtime formulation.  Their smoothing (eps = 1e-4
    moved into empty bins) has no effect where P and Q are both empty, which
    is every empty bin of Q except one case: outliers folded into a last group
    whose own bins are empty.  There Q gets ``eps`` mass, as with smoothing.
    Written this way each candidate costs O(1) from prefix sums (bins that
    share ``m`` share every group but the last), so 2048 bins take about a
    millisecond and no candidate has to be skipped.
    """
    hist = counts.astype(np.float64)
    candidates = np.arange(levels, hist.size + 1)
    divergence = _kl_divergences(hist, candidates, levels)
    return int(candidates[np.argmin(divergence)])


_KL_EPS = 1e-4


def _xlogx(values: np.ndarray) -> np.ndarray:
    safe = np.where(values > 0, values, 1.0)
    return np.where(values > 0, values * np.log(safe), 0.0)


def _prefix(values: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(values, dtype=np.float64)])


def _kl_divergences(hist: np.ndarray, candidates: np.ndarray, levels: int) -> np.ndarray:
    """KL(P || Q) for every candidate threshold bin (see ``_kl_threshold_bin``).

    ``KL = sum(p * log(p / q)) / sum(p) + log(sum(q) / sum(p))`` over bins
    with ``p > 0``, split into the groups shared by all candidates with the
    same ``m`` and the candidate's own last group.
    """
    mass, plogp, filled = _prefix(hist), _prefix(_xlogx(hist)), _prefix(hist > 0)
    total = mass[-1]
    merged = candidates // levels
    split = (levels - 1) * merged  # first bin of the last group
    shared = _shared_group_terms(hist, levels, int(merged.max()))[merged]
    outliers = total - mass[candidates]
    folded = hist[candidates - 1] + outliers  # P's last bin
    last_mass = mass[candidates] - mass[split]  # Q's last group, outliers excluded
    last_filled = filled[candidates - 1] - filled[split] + (folded > 0)
    q_last = np.where(last_mass > 0, last_mass / np.maximum(last_filled, 1), _KL_EPS)
    last_plogp = plogp[candidates - 1] - plogp[split] + _xlogx(folded)
    last_terms = last_plogp - (last_mass + outliers) * np.log(q_last)
    q_total = mass[candidates] + np.where((last_mass == 0) & (outliers > 0), _KL_EPS, 0.0)
    with np.errstate(divide="ignore"):
        divergence = (shared + last_terms) / total + np.log(q_total / total)
    return np.where(mass[candidates] > 0, divergence, np.inf)


def _shared_group_terms(hist: np.ndarray, levels: int, max_merged: int) -> np.ndarray:
    """``sum p*log(p/q)`` over the first ``levels - 1`` groups, indexed by group size ``m``."""
    terms = np.zeros(max_merged + 1)
    for m in range(1, max_merged + 1):
        groups = hist[: (levels - 1) * m].reshape(levels - 1, m)
        group_mass = groups.sum(axis=1)
        group_filled = np.count_nonzero(groups, axis=1)
        q = np.where(group_mass > 0, group_mass / np.maximum(group_filled, 1), 1.0)
        terms[m] = _xlogx(groups).sum() - np.sum(group_mass * np.log(q))
    return terms


# ---------------------------------------------------------------------------
# MSE calibration
# ---------------------------------------------------------------------------


def _suffix_moments(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Suffix sums of n, n*c, n*c**2 (bin centers c in bin-width units), length bins + 1."""
    centers = np.arange(counts.size) + 0.5

    def suffix(values):
        return np.concatenate([np.cumsum(values[::-1])[::-1], [0.0]])

    return suffix(counts), suffix(counts * centers), suffix(counts * centers**2)


def _clip_error_and_inside(counts: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For thresholds at bin edges: squared clipping error (bin units) and count kept inside."""
    s0, s1, s2 = _suffix_moments(counts)
    clip = np.maximum(s2[edges] - 2.0 * edges * s1[edges] + edges**2 * s0[edges], 0.0)
    return clip, s0[0] - s0[edges]


def _best_symmetric_mse_bin(counts: np.ndarray, steps: int) -> int:
    """Edge ``i`` (threshold ``i`` bins) minimizing noise ``(i/steps)**2/12 * inside + clip``."""
    edges = np.arange(1, counts.size + 1)
    clip, inside = _clip_error_and_inside(counts, edges)
    error = (edges / steps) ** 2 / 12.0 * inside + clip
    return int(edges[np.argmin(error)])


def _best_affine_mse_bins(neg: np.ndarray, pos: np.ndarray, steps: int, max_candidates: int = 512):
    """Edges ``(a, b)`` for the range ``[-a, b]`` (in bins) minimizing the expected MSE."""
    a_edges = _edge_candidates(neg, max_candidates)
    b_edges = _edge_candidates(pos, max_candidates)
    clip_a, inside_a = _clip_error_and_inside(neg, a_edges)
    clip_b, inside_b = _clip_error_and_inside(pos, b_edges)
    step = (a_edges[:, None] + b_edges[None, :]) / steps
    error = step**2 / 12.0 * (inside_a[:, None] + inside_b[None, :]) + clip_a[:, None] + clip_b[None, :]
    ia, ib = np.unravel_index(int(np.argmin(error)), error.shape)
    return int(a_edges[ia]), int(b_edges[ib])


def _edge_candidates(counts: np.ndarray, max_candidates: int) -> np.ndarray:
    """Bin edges from 0 to just past the last non-empty bin, thinned to ``max_candidates``."""
    filled = np.flatnonzero(counts > 0)
    last = int(filled[-1]) + 1 if filled.size else 0
    if last + 1 <= max_candidates:
        return np.arange(last + 1)
    return np.unique(np.linspace(0, last, max_candidates).round().astype(np.int64))


# ---------------------------------------------------------------------------
# factory
# ---------------------------------------------------------------------------

_OBSERVER_METHODS = {
    "minmax": (MinMaxObserver, {}),
    "moving_average": (MovingAverageMinMaxObserver, {}),
    "percentile": (HistogramObserver, {"method": "percentile"}),
    "entropy": (HistogramObserver, {"method": "entropy"}),
    "mse": (HistogramObserver, {"method": "mse"}),
    # auto: one histogram gives every method's candidate range; range_search.py picks per tensor
    "auto": (HistogramObserver, {"method": "mse"}),
}


def make_observer(method: str, **params) -> Observer:
    """Build the observer for a calibration method name from a qconfig."""
    if method not in _OBSERVER_METHODS:
        raise ConfigError(f"unknown calibration method '{method}'; valid: {', '.join(_OBSERVER_METHODS)}")
    cls, fixed = _OBSERVER_METHODS[method]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"} - set(fixed)
    unexpected = sorted(set(params) - accepted)
    if unexpected:
        raise ConfigError(
            f"calibration method '{method}' does not take parameter(s) {', '.join(unexpected)}; "
            f"it accepts: {', '.join(sorted(accepted))}"
        )
    return cls(**fixed, **params)


# ---------------------------------------------------------------------------
# quantization parameters
# ---------------------------------------------------------------------------


def _symmetric_steps(dtype, has_negatives: bool) -> int:
    """Steps from 0 to the range limit for symmetric quantization of ``dtype``."""
    qmin, qmax = qrange(dtype)
    if qmin < 0 or not has_negatives:
        return qmax
    return qmax - _unsigned_mid(qmax)


def _unsigned_mid(qmax: int) -> int:
    """Zero point of symmetric unsigned quantization (128 for uint8)."""
    return (qmax + 1) // 2


def _finish_scale(scale: float) -> float:
    """Never 0, never below ``MIN_SCALE``, and exactly a float32 value."""
    if scale == 0.0:
        return DEGENERATE_SCALE
    return float(np.float32(max(scale, MIN_SCALE)))


def choose_qparams(lo: float, hi: float, dtype, symmetric: bool) -> tuple[float, int]:
    """Scale and zero point for the range ``[lo, hi]`` (widened to contain 0).

    * symmetric, signed dtype: ``zp = 0``, ``scale = max(|lo|, |hi|) / qmax``.
    * symmetric, unsigned dtype: ``zp = 128`` (``(qmax+1)/2``) and
      ``scale = max(|lo|, |hi|) / 127`` when ``lo < 0``; otherwise ``zp = 0``
      and ``scale = hi / 255`` (a ReLU output uses every code).
    * asymmetric: ``scale = (hi - lo) / (qmax - qmin)``,
      ``zp = clamp(rint(qmin - lo / scale), qmin, qmax)``.

    The zero point is an integer code, so 0.0 is always exactly representable.
    The scale is rounded to float32 (the value stored in the model is the value
    used to derive multipliers), floored at ``MIN_SCALE``, and an all-zero range
    gets ``DEGENERATE_SCALE`` = 1.0 so the scale is never 0.
    """
    lo, hi = float(lo), float(hi)
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
        raise ValueError(f"invalid quantization range [{lo}, {hi}]")
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    qmin, qmax = qrange(dtype)
    if symmetric:
        return _symmetric_qparams(lo, hi, qmin, qmax)
    scale = _finish_scale((hi - lo) / (qmax - qmin))
    return scale, int(np.clip(np.rint(qmin - lo / scale), qmin, qmax))


def _symmetric_qparams(lo: float, hi: float, qmin: int, qmax: int) -> tuple[float, int]:
    amax = max(-lo, hi)
    if qmin < 0:
        return _finish_scale(amax / qmax), 0
    if lo < 0:
        zero_point = _unsigned_mid(qmax)
        return _finish_scale(amax / (qmax - zero_point)), zero_point
    return _finish_scale(hi / qmax), 0


# ---------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------

WEIGHT_METHODS = ("max", "mse")


def weight_qparams(w, axis: int | None = 0, dtype="int8", method: str = "max", symmetric: bool = True):
    """Per-channel (along ``axis``) or per-tensor (``axis=None``) weight scale and zero point.

    Returns ``(scale, zero_point)`` as a float32 array and an int32 array of
    shape ``(w.shape[axis],)``, or 0-d arrays when ``axis`` is None.

    Symmetric weights use the *restricted* range ``[-qmax, qmax]`` (int8:
    [-127, 127], zp 0; uint8: [1, 255] around zp 128), as ORT and TFLite do:
    the code -128 is never produced, so negating a weight can't overflow and
    the range is exactly symmetric.  Quantize them with
    ``reference.quantize(..., narrow_range=True)``.  Asymmetric weights use
    the full range with ``choose_qparams``' affine rule.

    ``method="max"`` covers each channel's full range; ``"mse"`` tries the clip
    ratios ``WEIGHT_CLIP_RATIOS`` (1.0 down to 0.01) for all channels at once
    and keeps, per channel, the one with the smallest actual squared
    quantization error (ties keep the larger range, so it is never worse than
    "max").  Symmetric weights shrink both ends by one ratio; asymmetric ones
    shrink ``hi`` first, then ``lo``, each with its own ratio.  An all-zero channel gets the median scale of the live channels
    (a folded bias on it keeps its neighbours' precision), or 1.0 if every
    channel is zero.
    """
    if method not in WEIGHT_METHODS:
        raise ConfigError(f"unknown weight quantization method '{method}'; valid: {', '.join(WEIGHT_METHODS)}")
    w = np.asarray(w, dtype=np.float32)
    _check_finite_weights(w)
    lo, hi = _channel_range(w, axis)
    if method == "max":
        return _weight_scale_zp(lo, hi, dtype, symmetric)
    return _mse_weight_qparams(w, lo, hi, axis, dtype, symmetric)


def _check_finite_weights(w: np.ndarray) -> None:
    if w.size == 0:
        raise CalibrationError("cannot choose quantization parameters for an empty weight")
    bad = w.size - int(np.count_nonzero(np.isfinite(w)))
    if bad:
        raise CalibrationError(f"weight has {bad} non-finite value(s) (NaN/Inf) out of {w.size}")


def _reduce_axes(ndim: int, axis: int | None) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    return tuple(i for i in range(ndim) if i != axis % ndim)


def _channel_range(w: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    axes = _reduce_axes(w.ndim, axis)
    lo = np.minimum(w.min(axis=axes).astype(np.float64), 0.0)
    hi = np.maximum(w.max(axis=axes).astype(np.float64), 0.0)
    return lo, hi


def _weight_scale_zp(lo: np.ndarray, hi: np.ndarray, dtype, symmetric: bool):
    """Vectorized ``choose_qparams`` for weights (restricted range when symmetric)."""
    qmin, qmax = qrange(dtype)
    if symmetric:
        zero_point = np.full(lo.shape, 0 if qmin < 0 else _unsigned_mid(qmax), dtype=np.int64)
        raw = np.maximum(-lo, hi) / (qmax - zero_point)
    else:
        raw = (hi - lo) / (qmax - qmin)
    scale = _finish_scales(raw)
    if not symmetric:
        zero_point = np.clip(np.rint(qmin - lo / scale), qmin, qmax).astype(np.int64)
    return scale.astype(np.float32), zero_point.astype(np.int32)


def _finish_scales(raw: np.ndarray) -> np.ndarray:
    """Array version of ``_finish_scale``; dead channels take the live median."""
    live = raw > 0
    scale = np.maximum(raw, MIN_SCALE).astype(np.float32).astype(np.float64)
    fill = float(np.median(scale[live])) if np.any(live) else DEGENERATE_SCALE
    return np.where(live, scale, float(np.float32(fill)))


def _mse_weight_qparams(w, lo, hi, axis, dtype, symmetric):
    """Clip search: one shared ratio if symmetric, else hi then lo separately (tails differ)."""
    if symmetric:
        lo, hi = _best_clip(w, lo, hi, axis, dtype, symmetric, shrink=(True, True))
    else:
        lo, hi = _best_clip(w, lo, hi, axis, dtype, symmetric, shrink=(False, True))
        lo, hi = _best_clip(w, lo, hi, axis, dtype, symmetric, shrink=(True, False))
    return _weight_scale_zp(lo, hi, dtype, symmetric)


def _best_clip(w, lo, hi, axis, dtype, symmetric, shrink):
    """Per channel, the ``(lo, hi)`` among ``WEIGHT_CLIP_RATIOS`` with the least squared error.

    Ratio 1.0 (the input range) is tried first and only a strictly smaller
    error replaces it, so the result is never worse than the input range.
    """
    shrink_lo, shrink_hi = shrink
    best_lo, best_hi = lo, hi
    best_error = weight_quantization_error(w, *_weight_scale_zp(lo, hi, dtype, symmetric), axis, dtype, symmetric)
    for ratio in WEIGHT_CLIP_RATIOS[1:]:
        candidate_lo = lo * ratio if shrink_lo else lo
        candidate_hi = hi * ratio if shrink_hi else hi
        params = _weight_scale_zp(candidate_lo, candidate_hi, dtype, symmetric)
        error = weight_quantization_error(w, *params, axis, dtype, symmetric)
        better = error < best_error
        best_lo = np.where(better, candidate_lo, best_lo)
        best_hi = np.where(better, candidate_hi, best_hi)
        best_error = np.where(better, error, best_error)
    return best_lo, best_hi


def weight_quantization_error(w, scale, zero_point, axis: int | None, dtype="int8", symmetric: bool = True):
    """Sum of squared errors per channel of quantize -> dequantize with the oracle arithmetic."""
    w = np.asarray(w, dtype=np.float32)
    q = quantize(w, scale, zero_point, dtype, axis=axis, narrow_range=symmetric)
    restored = dequantize(q, scale, zero_point, axis=axis)
    diff = restored.astype(np.float64) - w.astype(np.float64)
    return np.sum(diff * diff, axis=_reduce_axes(w.ndim, axis))


__all__ = [
    "Observer",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "HistogramObserver",
    "make_observer",
    "choose_qparams",
    "weight_qparams",
    "weight_quantization_error",
    "MIN_SCALE",
    "DEGENERATE_SCALE",
]
