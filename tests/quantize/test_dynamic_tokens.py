"""Per-token dynamic int8 as an automatic choice (quantize/smooth.py ``dynamic_tokens``): a dense layer whose
input rows differ in magnitude by orders (token by token, as in sequence models whose next op normalizes
each row) loses its small rows on one static scale. Calibration measures that (per-row error, static vs
run-time per-token scales) and gives such a layer per-token scales computed at run time: still int8 x int8
-> int32, not a fallback to int16. Rows of similar magnitude keep their static scale."""

import numpy as np
from tvm import relax

import qcompile
from qcompile.quantize.qconfig import QConfig
from .test_realize import relax_model

T, D, N = 32, 64, 48


def dense_model(seed=0):
    r = np.random.default_rng(seed)
    w = (r.standard_normal((D, N)) * 0.2).astype(np.float32)
    b = (r.standard_normal(N) * 0.01).astype(np.float32)

    def build(bb, x):
        return bb.emit(relax.op.add(relax.op.matmul(x, relax.const(w)), relax.const(b)))

    return relax_model([("x", (1, T, D))], build)


def token_data(n, seed, spread=True):
    """Rows N(0, 1) times a per-row magnitude, log-uniform over 10^-2..10^1 (spread) or about 1."""
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, T, D))
    mag = 10.0 ** r.uniform(-2, 1, size=(n, T, 1)) if spread else r.uniform(0.8, 1.2, size=(n, T, 1))
    return {"x": (x * mag).astype(np.float32)}


def _row_error(model, calib, ev, **qkw):
    """Mean over rows of each output row's relative error against fp32, and the compile state."""
    pipe = qcompile.Pipeline(qconfig=QConfig(calib_method="minmax", safety_net=False, **qkw), progress=False)
    art = pipe.run(model, calib=calib)
    ref = qcompile.compile(model)
    got = np.concatenate([art.run({"x": ev["x"][i:i + 1]})["y"] for i in range(len(ev["x"]))])
    want = np.concatenate([ref.run({"x": ev["x"][i:i + 1]})["y"] for i in range(len(ev["x"]))])
    err = ((got - want) ** 2).sum(-1) / (want ** 2).sum(-1)
    return float(err.mean()), pipe.state


def test_rows_of_every_magnitude_get_per_token_scales():
    model = dense_model()
    calib, ev = token_data(16, 1), token_data(4, 2)
    static, _ = _row_error(model, calib, ev, dynamic_tokens=False)
    dynamic, state = _row_error(model, calib, ev)
    assert state.quant_info["realized"] == {"matmul_0": "dynamic-int8"}
    (row,) = state.quant_info["smoothing"].values()
    assert row["dynamic"] and row["token_error"]["static"] > 10 * row["token_error"]["dynamic"], row
    assert any(n.startswith("per-token dynamic int8: static scales fail on 1 of 1") for n in state.notes)
    assert static > 0.05 and dynamic < static / 20, (dynamic, static)
    assert dynamic < 1e-3


def test_rows_of_one_magnitude_keep_static_scales():
    model = dense_model()
    _, state = _row_error(model, token_data(16, 1, spread=False), token_data(2, 2, spread=False))
    assert state.quant_info["realized"]["matmul_0"] in ("int8", "uint8")
    (row,) = state.quant_info["smoothing"].values()
    assert not row.get("dynamic") and row["token_error"]["static"] < 0.02, row


def test_simulation_matches_the_per_token_build():
    """Simulate mode (what the safety net and the sensitivity ranking run) fake-quantizes per token at
    run time, as the integer build computes: the two agree far closer than the static build does."""
    model = dense_model()
    calib, ev = token_data(16, 1), token_data(2, 2)
    outs = {}
    for name, qkw in (("integer", {}), ("simulate", {"mode": "simulate"}), ("static", {"dynamic_tokens": False})):
        art = qcompile.compile(model, qconfig=QConfig(calib_method="minmax", safety_net=False, **qkw), calib=calib)
        outs[name] = np.concatenate([art.run({"x": ev["x"][i:i + 1]})["y"] for i in range(len(ev["x"]))])
    gap = np.abs(outs["simulate"] - outs["integer"]).max()
    assert gap < 1e-3 * np.abs(outs["integer"]).max(), gap
    assert np.abs(outs["static"] - outs["integer"]).max() > 10 * gap
