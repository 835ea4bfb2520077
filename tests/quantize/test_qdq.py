"""Pre-quantized ONNX QDQ models compile to integer kernels with their own scales."""

import numpy as np
import pytest

import qcompile
from qcompile import zoo
from qcompile.quantize import qdq

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def qdq_model(tmp_path_factory):
    from qcompile.demo import ort_int8_model

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
