"""A tensor quantized on both sides (producer output and consumer input) only gets finer when both
sides move: mixed precision must find the pair, and simulate must keep codes through exact layers.

The model is MiniLM's FFN tail in miniature: a down-projection whose output has one outlier channel
(so its int8 grid is coarse for every other channel), read by the residual add; a float per-channel
scale after it (LayerNorm's gamma) brings the outlier back down, so the output sees the coarse grid.
matmul_0 and a side branch (matmul_2, add_1) are ordinary layers that each gain a little alone, which is
more than the down-projection gains alone: leave-one-out ranked it last (like matmul_7 on MiniLM).
"""

import numpy as np
from tvm import relax

import qcompile
from qcompile.quantize.qconfig import QConfig
from .test_realize import cosine, relax_model

S, H, F = 16, 32, 64


def _ffn_model():
    rng = np.random.default_rng(0)
    w0 = (rng.standard_normal((H, F)) / np.sqrt(H)).astype(np.float32)
    w1 = (rng.standard_normal((F, H)) / np.sqrt(F)).astype(np.float32)
    w1[:, 3] *= 80.0  # the outlier output channel
    gamma = np.ones(H, np.float32)
    gamma[3] = 0.01
    w2 = (rng.standard_normal((H, H)) / np.sqrt(H)).astype(np.float32)

    def build(bb, x):
        h = bb.emit(relax.op.tanh(bb.emit(relax.op.matmul(x, relax.const(w0)))))  # matmul_0, then float
        f = bb.emit(relax.op.matmul(h, relax.const(w1)))                           # matmul_1: outlier output
        r = bb.emit(relax.op.add(f, x))                                            # add_0 reads it
        y = bb.emit(relax.op.multiply(r, relax.const(gamma)))                      # float
        g = bb.emit(relax.op.tanh(bb.emit(relax.op.matmul(x, relax.const(w2)))))  # matmul_2, then float
        return bb.emit(relax.op.add(y, g))                                         # add_1

    calib = {"x": rng.standard_normal((24, S, H)).astype(np.float32)}
    held = {"x": rng.standard_normal((8, S, H)).astype(np.float32)}
    return relax_model([("x", (1, S, H))], build), calib, held


def test_budget_moves_both_sides_of_a_shared_tensor():
    model, calib, held = _ffn_model()
    # float_outputs off: else add_0 (read only by float ops) stays fp32 and matmul_1 writes float, so
    # the tensor is quantized on neither side and int8 meets the budget as is
    qc = QConfig(calib_method="minmax", budget={"metric": "cosine", "min": 0.99}, float_outputs=False, bias_correction=False)
    pipe = qcompile.Pipeline(qconfig=qc, progress=False)
    art = pipe.run(model, calib=calib, evaluation={"inputs": held})
    report = pipe.state.quant_info["mixed"]
    # every trial is a real integer compile: add_0 alone misses, and the fewest layers that meet it are the pair
    assert report["met"] and report["moved"] == {"add_0": "int16", "matmul_1": "int16"}
    assert any(t["moved"] == ["add_0"] and not t["ok"] for t in report["trials"])
    # the pair gains more than its members alone: the output grid of matmul_1 is add_0's input grid
    alone = report["sensitivity"]
    together = report["sensitivity_together"]["matmul_1+add_0"]
    assert together > max(alone["matmul_1"], 0) + max(alone["add_0"], 0)
    assert art.metadata["quantization"]["layers"]["matmul_1"] == "int16"


def test_simulate_keeps_int16_codes_through_exact_layers():
    """Two int16 matmuls with a reshape and a transpose between them (int8 layers by default): realize
    hands the int16 codes through unchanged, so simulate must not fake-quantize them on an int8 grid."""
    rng = np.random.default_rng(1)
    w0 = (rng.standard_normal((H, H)) / np.sqrt(H)).astype(np.float32)
    w1 = (rng.standard_normal((S, S)) / np.sqrt(S)).astype(np.float32)

    def build(bb, x):
        a = bb.emit(relax.op.matmul(x, relax.const(w0)))                     # matmul_0, int16
        t = bb.emit(relax.op.permute_dims(bb.emit(relax.op.reshape(a, (1, S, H))), [0, 2, 1]))
        return bb.emit(relax.op.matmul(t, relax.const(w1)))                  # matmul_1, int16

    model = relax_model([("x", (1, S, H))], build)
    calib = {"x": rng.standard_normal((16, S, H)).astype(np.float32)}
    x = {"x": calib["x"][:4]}  # inside the calibrated range: no clamping in either model
    fp32 = qcompile.compile(model).run(x)["y"]
    out = {}
    for mode in ("integer", "simulate"):
        qc = QConfig(calib_method="minmax", keep_int16=["matmul_0", "matmul_1"], mode=mode)
        art = qcompile.compile(model, qconfig=qc, calib=calib)
        assert art.metadata["quantization"]["layers"]["matmul_1"] in ("int16", "sim-int16")
        out[mode] = art.run(x)["y"]
    int16_error = np.abs(out["integer"] - fp32).max()
    assert int16_error > 0
    # the simulation predicts the integer model to well within the int16 model's own error
    assert np.abs(out["simulate"] - out["integer"]).max() <= int16_error


def test_float_outputs_end_the_region_in_float():
    """The default (float_outputs): add_0 and add_1, read only by float ops, stay fp32 and say why;
    matmul_1 writes float(acc) * scale; int8 then keeps the output far better than with requantized
    codes at the region's exits."""
    model, calib, held = _ffn_model()
    fp32 = qcompile.compile(model)
    ref = np.concatenate([fp32.run({"x": held["x"][i:i + 1]})["y"] for i in range(8)])

    def cos(**qkw):
        pipe = qcompile.Pipeline(qconfig=QConfig(calib_method="minmax", safety_net=False, **qkw), progress=False)
        art = pipe.run(model, calib=calib)
        got = np.concatenate([art.run({"x": held["x"][i:i + 1]})["y"] for i in range(8)])
        return cosine(got, ref), pipe.state

    with_codes, _ = cos(float_outputs=False, bias_correction=False)
    with_float, state = cos()
    kept = state.quant_info["summary"]["kept_fp32_by_rule"]
    assert kept == {"add_0": "no integer layer reads its output", "add_1": "no integer layer reads its output"}
    assert state.quant_info["summary"]["layers"]["matmul_1"] == "int8"
    assert 1 - with_float < (1 - with_codes) / 5, (with_float, with_codes)
