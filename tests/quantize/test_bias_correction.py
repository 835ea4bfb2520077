"""Bias correction (quantize/bias_correction.py): the mean output shift that rounded weights cause on
inputs with a non-zero mean is taken out of the bias. A depthwise 3x3 conv (9 weights a channel, so the
rounding error does not average out) on post-activation-like inputs (positive, mean far from zero) is
the pattern: the corrected build's error must be at least halved, and its integer output must stay
bit-exact with the numpy reference computed with the corrected bias."""

import numpy as np
import pytest
from tvm import relax

import qcompile
from qcompile.errors import ConfigError
from qcompile.quantize import bias_correction
from qcompile.quantize.qconfig import QConfig
from qcompile.quantize.weights import quantize_weight
from .test_realize import compile_quantized, conv_reference_codes, out_codes, relax_model

C, H, W = 16, 10, 10


def depthwise_model(seed=0):
    r = np.random.default_rng(seed)
    w = (r.standard_normal((C, 1, 3, 3)) * 0.1).astype(np.float32)
    w[:, 0, 1, 1] = r.choice([-1.5, 1.5], size=C)   # a dominant centre tap sets the step the others round to
    b = (r.standard_normal(C) * 0.1).astype(np.float32)

    def build(bb, x):
        y = relax.op.nn.conv2d(x, relax.const(w), padding=[1, 1, 1, 1], groups=C)
        return bb.emit(relax.op.add(y, relax.const(b.reshape(1, C, 1, 1))))

    return relax_model([("x", (1, C, H, W))], build), w, b


def positive_inputs(n, seed):
    """Like a ReLU/HardSwish output: positive, each channel's mean 2-6, spread much smaller."""
    mean = np.random.default_rng(0).uniform(2.0, 6.0, size=(1, C, 1, 1))   # the same distribution every call
    r = np.random.default_rng(seed)
    return {"x": (mean + 0.3 * r.standard_normal((n, C, H, W))).clip(0).astype(np.float32)}


def _run(art, x):
    return np.concatenate([art.run({"x": x[i:i + 1]})["y"] for i in range(len(x))])


def _relative_error(model, calib, ev, **qkw):
    pipe = qcompile.Pipeline(qconfig=QConfig(calib_method="minmax", safety_net=False, **qkw), progress=False)
    art = pipe.run(model, calib=calib)
    got, want = _run(art, ev["x"]), _run(qcompile.compile(model), ev["x"])
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))   # the border sees padding, not the mean
    return float(np.linalg.norm((got - want)[inner]) / np.linalg.norm(want[inner])), pipe.state


def test_bias_correction_removes_the_mean_shift_of_rounded_weights():
    model, _, _ = depthwise_model()
    calib, ev = positive_inputs(16, 1), positive_inputs(4, 2)
    plain, _ = _relative_error(model, calib, ev, bias_correction=False)
    fixed, state = _relative_error(model, calib, ev)
    assert fixed < plain / 2, (fixed, plain)
    (mean,) = state.quant_info["input_means"].values()
    np.testing.assert_allclose(mean, calib["x"].mean(axis=(0, 2, 3)), rtol=1e-5)


def test_corrected_build_is_bit_exact_with_the_reference():
    """Integer output (float_outputs off) == numpy's integer conv with bias - dW . E[x], E[x] from numpy."""
    model, w, b = depthwise_model()
    calib, ev = positive_inputs(16, 1), positive_inputs(2, 2)
    art, state = compile_quantized(model, calib, calib_method="minmax", safety_net=False, bias_correction=True)
    (layer,) = state.quant_info["plan"].layers
    w_scale, w_q = quantize_weight(w, "int8", state.quant_info["qconfig"], axis=0)
    mean = calib["x"].astype(np.float64).mean(axis=(0, 2, 3))
    bias = bias_correction.corrected(b, w, w_scale, w_q, mean, "relax.nn.conv2d", axis=0, groups=C)
    assert np.abs(bias - b).max() > 1e-3       # the correction is not a no-op here
    x = ev["x"][:1]
    want, (so, zo) = conv_reference_codes(state, layer, x, w, bias, 1, 1, 1, C, False)
    np.testing.assert_array_equal(out_codes(art.run({"x": x})["y"], so, zo), want)


def test_output_shift_matches_a_direct_computation():
    r = np.random.default_rng(3)
    err, mean = r.standard_normal((5, 7)), r.standard_normal(5)
    np.testing.assert_allclose(bias_correction.output_shift(err, mean, "relax.matmul"), mean @ err)
    # grouped conv: 2 groups of 3 input channels, 4 output channels
    err4, mean6 = r.standard_normal((4, 3, 3, 3)), r.standard_normal(6)
    want = [sum(err4[o, i].sum() * mean6[(o // 2) * 3 + i] for i in range(3)) for o in range(4)]
    np.testing.assert_allclose(bias_correction.output_shift(err4, mean6, "relax.nn.conv2d", groups=2), want)


def test_bias_correction_must_be_boolean():
    with pytest.raises(ConfigError, match="bias_correction"):
        QConfig.from_dict({"bias_correction": "no"}, source="q.yaml")


def test_simulate_mode_applies_the_same_correction():
    """Fake-quant simulation (what the sensitivity ranking runs) adds the same bias shift as realize folds."""
    model, _, _ = depthwise_model()
    calib, ev = positive_inputs(16, 1), positive_inputs(4, 2)
    outs = {}
    for mode in ("integer", "simulate"):
        art = qcompile.compile(model, qconfig=QConfig(calib_method="minmax", safety_net=False, mode=mode), calib=calib)
        outs[mode] = _run(art, ev["x"])[:, :, 1:-1, 1:-1]
    gap = np.abs((outs["simulate"] - outs["integer"]).mean(axis=(0, 2, 3))).max()
    plain = qcompile.compile(model, qconfig=QConfig(calib_method="minmax", safety_net=False, bias_correction=False),
                             calib=calib)
    shift = np.abs((_run(plain, ev["x"])[:, :, 1:-1, 1:-1] - outs["integer"]).mean(axis=(0, 2, 3))).max()
    assert gap < shift / 5, (gap, shift)
