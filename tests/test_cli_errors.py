"""Bad input gets one clear line from the CLI, exit code 2, no traceback, no partial output."""

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from conftest import make_conv_model, run_cli


def assert_clean_failure(proc, *needles, out_dir=None):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "qcompile: error:" in proc.stderr
    for n in needles:
        assert n in proc.stderr, (n, proc.stderr)
    if out_dir is not None:
        assert not os.path.exists(out_dir)
        parent = os.path.dirname(out_dir)
        assert not [f for f in os.listdir(parent) if f.startswith("." + os.path.basename(out_dir))], os.listdir(parent)


def test_missing_model_file(tmp_path):
    out = str(tmp_path / "out")
    assert_clean_failure(run_cli("compile", tmp_path / "nope.onnx", "-o", out), "nope.onnx", "no such", out_dir=out)


def test_truncated_onnx(tmp_path):
    data = make_conv_model().SerializeToString()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: len(data) // 2])
    out = str(tmp_path / "out")
    assert_clean_failure(run_cli("compile", bad, "-o", out), "truncated.onnx", out_dir=out)


def test_garbage_onnx(tmp_path):
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    out = str(tmp_path / "out")
    assert_clean_failure(run_cli("compile", bad, "-o", out), "garbage.onnx", out_dir=out)


def test_unsupported_op_names_op_node_and_opset(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    node = helper.make_node("Relu", ["x"], ["r"], name="ok_relu")
    weird = helper.make_node("MatMulInteger", ["r", "r"], ["y"], name="my_int_matmul")
    model = helper.make_model(helper.make_graph([node, weird], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 13)])
    path = tmp_path / "unsupported.onnx"
    onnx.save(model, str(path))
    out = str(tmp_path / "out")
    assert_clean_failure(run_cli("compile", path, "-o", out),
                         "MatMulInteger", "my_int_matmul", "opset 13", out_dir=out)


def test_custom_domain_op(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    node = helper.make_node("FusedGelu", ["x"], ["y"], name="gelu7", domain="com.microsoft")
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)])
    path = tmp_path / "custom.onnx"
    onnx.save(model, str(path))
    out = str(tmp_path / "out")
    assert_clean_failure(run_cli("compile", path, "-o", out), "com.microsoft.FusedGelu", "gelu7", out_dir=out)


def test_target_yaml_unknown_key(tmp_path, conv_onnx):
    bad = tmp_path / "mytarget.yaml"
    bad.write_text("name: mine\ntvm_target: {kind: llvm}\nquant:\n  activation_dtyp: int8\n")
    out = str(tmp_path / "out")
    assert_clean_failure(run_cli("compile", conv_onnx, "--target", bad, "-o", out),
                         "mytarget.yaml", "quant.activation_dtyp", out_dir=out)


def test_unknown_target_name(tmp_path, conv_onnx):
    out = str(tmp_path / "out")
    assert_clean_failure(run_cli("compile", conv_onnx, "--target", "riscv_magic", "-o", out),
                         "riscv_magic", "x86_64", out_dir=out)


def test_bad_input_shape_flag(tmp_path, conv_onnx):
    out = str(tmp_path / "out")
    assert_clean_failure(run_cli("compile", conv_onnx, "--input-shape", "nosuch:1x3x8x8", "-o", out),
                         "nosuch", "'x'", out_dir=out)
    assert_clean_failure(run_cli("compile", conv_onnx, "--input-shape", "x:1x3xAx8", "-o", out),
                         "x:1x3xAx8", out_dir=out)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    d = tmp_path_factory.mktemp("art")
    model = d / "conv.onnx"
    onnx.save(make_conv_model(), str(model))
    out = d / "out"
    proc = run_cli("compile", model, "--input-shape", "x:2x3x8x8", "-o", out)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.parametrize("inputs, needles", [
    ({"X": np.zeros((2, 3, 8, 8), np.float32)}, ["unknown ['X']", "missing ['x']"]),
    ({"x": np.zeros((2, 3, 9, 8), np.float32)}, ["'x'", "[2, 3, 9, 8]", "[2, 3, 8, 8]"]),
    ({"x": np.zeros((2, 3, 8, 8), np.float64)}, ["'x'", "float64", "float32"]),
    ({"x": np.zeros((3, 3, 8, 8), np.float32)}, ["[3, 3, 8, 8]"]),
])
def test_run_rejects_wrong_inputs(compiled, tmp_path, inputs, needles):
    path = tmp_path / "in.npz"
    np.savez(path, **inputs)
    out = tmp_path / "y.npz"
    proc = run_cli("run", compiled, "--inputs", path, "--output", out)
    assert_clean_failure(proc, *needles)
    assert not out.exists()


def test_run_missing_artifact_and_inputs(compiled, tmp_path):
    assert_clean_failure(run_cli("run", tmp_path / "nothing", "--inputs", "a.npz", "--output", "b.npz"), "nothing")
    assert_clean_failure(run_cli("run", compiled, "--inputs", tmp_path / "none.npz", "--output", "b.npz"), "none.npz")
    notnpz = tmp_path / "bad.npz"
    notnpz.write_text("hello")
    assert_clean_failure(run_cli("run", compiled, "--inputs", notnpz, "--output", "b.npz"), "bad.npz")


def test_run_chunks_multiples_of_batch(compiled, tmp_path):
    x = np.random.default_rng(1).standard_normal((6, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    proc = run_cli("run", compiled, "--inputs", tmp_path / "in.npz", "--output", tmp_path / "y.npz")
    assert proc.returncode == 0, proc.stderr
    y = np.load(tmp_path / "y.npz")["y"]
    import onnxruntime as ort

    ref = ort.InferenceSession(make_conv_model().SerializeToString()).run(None, {"x": x})[0]
    assert y.shape == (6, 5)
    np.testing.assert_allclose(y, ref, atol=1e-4, rtol=1e-4)


def test_failed_compile_keeps_previous_artifact(compiled, tmp_path):
    """A failing recompile into an existing folder leaves the old artifact intact."""
    before = sorted(os.listdir(compiled))
    proc = run_cli("compile", tmp_path / "missing.onnx", "-o", compiled)
    assert proc.returncode == 2
    assert sorted(os.listdir(compiled)) == before
