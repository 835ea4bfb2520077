"""Bias correction: take the mean error of the rounded weights out of the layer's bias.

Rounding a weight to its int8 grid leaves an error ``dW = dequantize(W_q) - W`` that is not zero on
average over a channel's few weights (a 3x3 depthwise filter has 9). On inputs whose mean is not zero
(every activation after a ReLU, HardSwish, sigmoid gate), the quantized layer's output is then shifted by

    E[y_q - y] = dW @ E[x]        (dense: over K;  conv2d: over the input channels and kernel taps)

per output channel, a bias that every later layer inherits. Subtracting it from the layer's float bias
before that bias is quantized removes the shift exactly in expectation (Nagel et al., "Data-Free
Quantization Through Weight Equalization and Bias Correction", 2019; AIMET and NNCF's BiasCorrection do
the empirical form). ``E[x]`` per input channel comes from the calibration pass itself (``InputMeans``:
the inputs of conv2d and dense layers are observed anyway), so it costs no extra run.

Padding is ignored (a border pixel sees zeros where the mean assumes ``E[x]``), as the papers do.
"""

from __future__ import annotations

import numpy as np


def applies(qconfig, state) -> bool:
    """Static integer quantization with bias correction on, on a model that is not pre-quantized."""
    return (bool(getattr(qconfig, "bias_correction", False)) and not qconfig.is_dynamic and not qconfig.is_float
            and not state.quant_info.get("fixed_qparams"))


def channel_axis(layer):
    """The input channel axis of a conv2d (NCHW) or dense layer with a constant weight, else None."""
    if layer.weight is None:
        return None
    if layer.op == "relax.nn.conv2d" and layer.weight.ndim == 4:
        return 1
    if layer.op == "relax.matmul" and layer.weight.ndim == 2:
        return -1
    return None


class InputMeans:
    """Running per-channel means of the inputs of conv2d / dense layers, over the calibration batches."""

    def __init__(self, plan):
        self.axes = {}
        for layer in plan.layers:
            axis = channel_axis(layer)
            if axis is not None:
                self.axes[layer.inputs[0]] = axis
        self._sums: dict = {}
        self._counts: dict = {}

    def update(self, var, value: np.ndarray, factor=None):
        """Add one batch of `var` (times `factor`, a per-channel vector, if given)."""
        axis = self.axes.get(var)
        if axis is None:
            return
        x = np.moveaxis(np.asarray(value, np.float64), axis, -1)
        x = x.reshape(-1, x.shape[-1])
        total = x.sum(axis=0) * (1.0 if factor is None else np.asarray(factor, np.float64).reshape(-1))
        self._sums[var] = self._sums.get(var, 0.0) + total
        self._counts[var] = self._counts.get(var, 0) + x.shape[0]

    def watch(self, var, axis):
        """Also collect `var` (a tensor made during calibration, like a smoothed activation)."""
        self.axes[var] = axis

    def means(self) -> dict:
        return {v: (s / self._counts[v]) for v, s in self._sums.items() if self._counts[v]}


def output_shift(error: np.ndarray, mean: np.ndarray, op: str, groups: int = 1) -> np.ndarray:
    """E[dW x] per output channel: the mean shift the weight error ``error`` causes on inputs of mean `mean`.

    dense: error [K, N], mean [K] -> [N].  conv2d: error [O, I/groups, kh, kw], mean [I] -> [O]."""
    mean = np.asarray(mean, np.float64).reshape(-1)
    if op == "relax.matmul":
        return mean @ error.astype(np.float64)
    per_tap = error.astype(np.float64).sum(axis=(2, 3))            # [O, I/g]
    out_ch, in_per_group = per_tap.shape
    if mean.size != in_per_group * groups:
        raise ValueError(f"{mean.size} input channel means for a conv with {in_per_group} x {groups} input channels")
    group_of = np.arange(out_ch) // (out_ch // groups)            # [O]
    x = mean.reshape(groups, in_per_group)[group_of]                # [O, I/g]
    return (per_tap * x).sum(axis=1)


def weight_error(weight, scale, codes, axis: int) -> np.ndarray:
    """dequantize(codes) - weight, with per-channel `scale` along `axis` (float64)."""
    shape = [1] * codes.ndim
    shape[axis] = -1
    return codes.astype(np.float64) * np.asarray(scale, np.float64).reshape(shape) - weight.astype(np.float64)


def corrected(bias, weight, scale, codes, mean, op: str, axis: int, groups: int = 1) -> np.ndarray:
    """The float bias minus the mean output error of the weight codes (``bias`` None counts as zeros)."""
    shift = output_shift(weight_error(weight, scale, codes, axis), mean, op, groups)
    base = np.zeros(shift.shape) if bias is None else np.asarray(bias, np.float64).reshape(-1)
    return base - shift
