"""Pre-quantized ONNX QDQ models compile to integer kernels with their own scales."""

import numpy as np
import pytest

import qcompile
from qcompile import zoo
from qcompile.quantize import qdq

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def qdq_model(tmp_path_factory):
    from qcompile.cli.demo import ort_int8_model

    path = tmp_path_factory.mktemp("qdq") / "digits_qdq.onnx"
    return ort_int8_model(zoo.DIGITS_MODEL, zoo.digits_calib(), str(path))


def test_qdq_model_realizes_with_its_own_scales(qdq_model):
    pipe = qcompile.Pipeline()
    art = pipe.run(qdq_model)  # no qconfig, no calibration data
    assert any("pre-quantized" in n for n in art.metadata["notes"])
    layers = art.metadata["quantization"]["layers"]
    assert set(layers.values()) == {"int8"} and len(layers) == 9
    fixed = pipe.state.quant_info["fixed_qparams"]
    assert len(fixed) >= 8 and all(dtype == "uint8" for _, _, dtype in fixed.values())
    # the realized module's input quantize uses the model's own input scale (1/255)
    inputs, labels = zoo.digits_test()
    y = art.run(inputs)["logits"]
    assert (y.argmax(1) == labels).mean() >= 0.97


def test_fold_qdq_removes_activation_pairs(qdq_model):
    from qcompile.pipeline import CompileState, stage_import, stage_preprocess
    from qcompile.target import load_target

    st = CompileState(source=qdq_model, target=load_target())
    stage_import(st)
    stage_preprocess(st)
    assert qdq.has_qdq(st.mod)
    folded, qparams = qdq.fold_qdq(st.mod)
    assert not qdq.has_qdq(folded)
    scales = sorted(s for s, _, _ in qparams.values())
    assert abs(scales[0] - 1 / 255) < 1e-9 or min(scales) > 0


def test_export_qdq_runs_in_onnxruntime(tmp_path):
    """The exported QDQ model, run by ORT as plain QDQ (no int8 kernel fusion), gives the same
    predictions as the compiled integer model: same scales, same weight codes."""
    from conftest import run_cli

    out = tmp_path / "q"
    proc = run_cli("compile", zoo.DIGITS_MODEL, "-q", "int8", "--calib", zoo.DIGITS_CALIB, "--export-qdq", "-o", out)
    assert proc.returncode == 0, proc.stderr
    import onnx

    exported = onnx.load(str(out / "model_qdq.onnx"))
    ops = [n.op_type for n in exported.graph.node]
    assert ops.count("QuantizeLinear") >= 8 and ops.count("DequantizeLinear") >= ops.count("QuantizeLinear") + 5
    assert {i.data_type for i in exported.graph.initializer if i.name.endswith("weight_quantized")} == {3}  # int8
    inputs, labels = zoo.digits_test()
    ours = qcompile.load(str(out)).run(inputs)["logits"]
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(out / "model_qdq.onnx"), opts)
    theirs = np.concatenate([sess.run(None, {"input": inputs["input"][i:i + 1]})[0] for i in range(len(labels))])
    assert (ours.argmax(1) == theirs.argmax(1)).mean() >= 0.99
    diff = np.abs(ours - theirs)  # integer requantize vs float QDQ simulation: off by a few output LSBs at most
    assert diff.mean() < 0.05 and diff.max() < 1.0


def test_ort_baseline_writes_nothing_beside_the_source_model(tmp_path):
    """quantize_static writes '<model>-inferred.onnx' next to its input; for the bundled model that is
    inside site-packages, and two benchmark runs raced on the file. A directory's mtime changes when a
    file is created or removed in it."""
    import os
    import shutil

    from qcompile.cli.demo import ort_int8_model

    src = tmp_path / "src"
    src.mkdir()
    model = src / "digits.onnx"
    shutil.copy(zoo.DIGITS_MODEL, model)
    os.utime(src, ns=(0, 0))
    calib = {k: v[:8] for k, v in zoo.digits_calib().items()}
    out = ort_int8_model(str(model), calib, str(tmp_path / "q.onnx"))
    assert os.path.getsize(out) > 0
    assert os.stat(src).st_mtime_ns == 0 and os.listdir(src) == ["digits.onnx"]
