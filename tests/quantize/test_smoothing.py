"""Smoothing (SmoothQuant, quantize/smooth.py): a dense layer's input with systematic outlier channels
gets them moved into the weights, with alpha chosen by measured error; rare spikes in random channels
are not mistaken for outlier channels. Every smoothed model stays bit-identical in float arithmetic
(x / s) @ (s W) == x @ W up to float rounding, which the fp32 check pins."""

import numpy as np
import pytest
from tvm import relax

import qcompile
from qcompile.quantize.qconfig import QConfig
from .test_realize import relax_model

T, D, N = 16, 64, 48


def outlier_model(seed=0):
    """x (LayerNorm-like rows with a few channels 30-60x the rest, on every token) -> dense -> out."""
    r = np.random.default_rng(seed)
    w = (r.standard_normal((D, N)) * 0.2).astype(np.float32)

    def build(bb, x):
        return bb.emit(relax.op.add(relax.op.matmul(x, relax.const(w)), relax.const(np.zeros(N, np.float32))))

    return relax_model([("x", (1, T, D))], build), w


def outlier_data(n, seed, spikes=False):
    r = np.random.default_rng(seed)
    x = (r.standard_normal((n, T, D)) * 0.5).astype(np.float32)
    if spikes:  # 0.2% of values, any channel: not systematic
        hit = r.random(x.shape) < 0.002
        x[hit] = r.choice([-25.0, 25.0], size=int(hit.sum()))
    else:       # channels 3 and 40 carry large values on every token (transformer-style)
        x[..., 3] = 20.0 + r.standard_normal((n, T)) * 5.0
        x[..., 40] = -25.0 + r.standard_normal((n, T)) * 5.0
    return {"x": x}


def _compile_and_score(model, calib, ev, **qkw):
    pipe = qcompile.Pipeline(qconfig=QConfig(calib_method="minmax", safety_net=False, **qkw), progress=False)
    art = pipe.run(model, calib=calib)
    ref = qcompile.compile(model)
    got = np.concatenate([art.run({"x": ev["x"][i:i + 1]})["y"] for i in range(len(ev["x"]))])
    want = np.concatenate([ref.run({"x": ev["x"][i:i + 1]})["y"] for i in range(len(ev["x"]))])
    # the error left, relative to the signal (1 - cosine hides small differences near 1)
    err = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    return err, pipe.state


def test_outlier_channels_are_smoothed_and_error_drops():
    model, _ = outlier_model()
    calib, ev = outlier_data(24, 1), outlier_data(6, 2)
    plain, _ = _compile_and_score(model, calib, ev, smoothing=False)
    smoothed, state = _compile_and_score(model, calib, ev)
    report = state.quant_info["smoothing"]
    (row,) = report.values()
    assert row["alpha"] > 0 and row["outlier_ratio"] > 10, row
    assert smoothed < plain / 3, (smoothed, plain)
    assert any(n.startswith("smoothing: 1 of 1") for n in state.notes)
    # the rewrite reads x / s: one multiply by a constant feeds the dense layer
    plan = state.quant_info["plan"]
    (layer,) = [l for l in plan.layers if l.op == "relax.matmul"]
    assert layer.inputs[0].name.endswith("_smoothed")


def test_rare_spikes_are_not_outlier_channels():
    model, _ = outlier_model()
    calib = outlier_data(24, 1, spikes=True)
    _, state = _compile_and_score(model, calib, outlier_data(2, 2, spikes=True))
    (row,) = state.quant_info["smoothing"].values()
    assert row["alpha"] == 0.0 and row["outlier_ratio"] < 2, row


def test_smoothing_keeps_the_float_function():
    """The rewritten graph computes (x * (1/s)) @ (s W) = x @ W: the weight it plans is s W."""
    from qcompile.quantize import smooth

    model, w = outlier_model()
    calib = outlier_data(8, 1)
    pipe = qcompile.Pipeline(qconfig=QConfig(calib_method="minmax", safety_net=False), progress=False)
    pipe.run(model, calib=calib)
    plan = pipe.state.quant_info["plan"]
    (layer,) = [l for l in plan.layers if l.op == "relax.matmul"]
    s = 1.0 / next(v for v in _constants_feeding(plan.func, layer.inputs[0]))
    np.testing.assert_allclose(layer.weight / s[:, None], w, rtol=1e-6)
    assert smooth.ALPHAS[0] == 0.0  # "no smoothing" is always a candidate


def _constants_feeding(func, var):
    for b in func.body.blocks[0].bindings:
        if b.var.same_as(var):
            yield b.value.args[1].value.numpy().reshape(-1)


@pytest.mark.parametrize("key", ["smoothing", "float_outputs", "safety_net"])
def test_qconfig_switch_must_be_a_boolean(tmp_path, key):
    """A qconfig file that says `smoothing: "no"` is refused naming the file and the key (a string would
    otherwise read as true)."""
    from qcompile.errors import ConfigError

    path = tmp_path / "q.yaml"
    path.write_text(f'{key}: "no"\n')
    with pytest.raises(ConfigError, match=rf"q.yaml: '{key}' must be true or false"):
        QConfig.from_yaml(str(path))
    path.write_text(f"{key}: false\n")
    assert getattr(QConfig.from_yaml(str(path)), key) is False


# ---------------------------------------------------------------- convolutions (cross-layer equalization)
C, HW = 16, 12


def conv_outlier_model(kind, seed=0):
    """A float activation (a model input here; in a network, a float op's output such as a HardSwish)
    with a few channels 40x the rest, read by a depthwise 3x3 or a pointwise 1x1 conv."""
    r = np.random.default_rng(seed)
    if kind == "depthwise":
        w = (r.standard_normal((C, 1, 3, 3)) * 0.3).astype(np.float32)
        groups, pad = C, [1, 1, 1, 1]
    else:
        w = (r.standard_normal((24, C, 1, 1)) * 0.3).astype(np.float32)
        groups, pad = 1, [0, 0, 0, 0]

    def build(bb, x):
        return bb.emit(relax.op.nn.conv2d(x, relax.const(w), padding=pad, groups=groups))

    return relax_model([("x", (1, C, HW, HW))], build), w


def conv_outlier_data(n, seed):
    r = np.random.default_rng(seed)
    x = (r.standard_normal((n, C, HW, HW)) * 0.5).astype(np.float32)
    x[:, 2] *= 40.0
    x[:, 9] *= 25.0
    return {"x": x}


@pytest.mark.parametrize("kind", ["depthwise", "pointwise"])
def test_conv_input_outlier_channels_are_equalized(kind):
    """Cross-layer equalization for the conv stacks of CNN backbones: the channel ranges of a float
    activation move into a depthwise conv's per-channel filters (for free) or a pointwise conv's input
    channels (alpha measured), error at least 3x lower; the conv computes the same in float."""
    model, w = conv_outlier_model(kind)
    calib, ev = conv_outlier_data(16, 1), conv_outlier_data(4, 2)
    want = qcompile.compile(model)
    want = np.concatenate([want.run({"x": ev["x"][i:i + 1]})["y"] for i in range(len(ev["x"]))])

    def channel_error(**qkw):
        """Mean over output channels of each channel's relative error (the big channels would hide the rest)."""
        pipe = qcompile.Pipeline(qconfig=QConfig(calib_method="minmax", safety_net=False, **qkw), progress=False)
        art = pipe.run(model, calib=calib)
        got = np.concatenate([art.run({"x": ev["x"][i:i + 1]})["y"] for i in range(len(ev["x"]))])
        err = ((got - want) ** 2).sum(axis=(0, 2, 3)) / (want ** 2).sum(axis=(0, 2, 3))
        return float(err.mean()), pipe.state

    plain, _ = channel_error(smoothing=False)
    equalized, state = channel_error()
    (row,) = state.quant_info["smoothing"].values()
    assert row["alpha"] > 0, row
    assert equalized < plain / 3, (equalized, plain)
    (layer,) = [l for l in state.quant_info["plan"].layers if l.op == "relax.nn.conv2d"]
    assert layer.inputs[0].name.endswith("_smoothed")
    # the planned weight is w with input channel k scaled by s_k: x/s (*) s.w == x (*) w
    ratio = layer.weight / w
    per_channel = ratio[:, 0, 0, 0] if kind == "depthwise" else ratio[0, :, 0, 0]
    assert per_channel[2] > 10 * np.median(per_channel)
