"""fp16 / bf16 compute for float layers (whole model, or the fp32 fallbacks of an int8 model)."""

import numpy as np
import pytest

import qcompile
from qcompile import zoo
from qcompile.quantize.qconfig import QConfig


def _ir_after_realize(qconfig, calib=None):
    captured = {}
    pipe = qcompile.Pipeline(qconfig=qconfig)
    pipe.add_pass(lambda mod: captured.setdefault("mod", mod), after="realize")
    art = pipe.run(zoo.DIGITS_MODEL, calib=calib)
    return art, str(captured["mod"]["main"])


@pytest.mark.parametrize("precision, dtype, tol", [("fp16", "float16", 0.05), ("bf16", "bfloat16", 0.3)])
def test_narrow_float_model(precision, dtype, tol):
    art, ir = _ir_after_realize(QConfig(precision=precision))
    assert f'"{dtype}"' in ir and "int8" not in ir
    inputs, labels = zoo.digits_test()
    ref = qcompile.compile(zoo.DIGITS_MODEL).run(inputs)["logits"]
    y = art.run(inputs)["logits"]
    err = np.abs(y - ref).max()
    assert 0 < err < tol  # narrower than fp32, but close
    assert (y.argmax(1) == labels).mean() >= 0.98


def test_fp32_fallback_layers_in_fp16():
    art, ir = _ir_after_realize(QConfig(keep_fp32=["conv2d_0"], float_dtype="float16"), calib=zoo.digits_calib())
    assert any("1 float conv2d/matmul run with float16" in n for n in art.metadata["notes"])
    assert art.metadata["quantization"]["layers"]["conv2d_0"] == "fp32"
    assert art.metadata["quantization"]["layers"]["conv2d_1"] == "int8"
