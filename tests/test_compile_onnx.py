"""Compile + run real ONNX models and compare with ONNX Runtime."""

import json
import os

import numpy as np
import pytest

import qcompile
from qcompile import zoo
from conftest import make_conv_model, rel_max_diff, run_cli

ort = pytest.importorskip("onnxruntime")


def ort_run(model, feed):
    data = model if isinstance(model, (str, bytes)) else model.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feed)


def test_bundled_digits_matches_ort_on_whole_test_split(tmp_path):
    inputs, labels = zoo.digits_test()
    art = qcompile.compile(zoo.DIGITS_MODEL, target="auto", out_dir=str(tmp_path / "digits"))
    ours = art.run(inputs)["logits"]
    ref = ort_run(zoo.DIGITS_MODEL, inputs)[0]
    assert ours.shape == ref.shape == (len(labels), 10)
    assert np.abs(ours - ref).max() <= 1e-4
    assert (ours.argmax(1) == ref.argmax(1)).all()
    assert (ours.argmax(1) == labels).mean() >= 0.95
    # the folder reloads and gives the same answers
    again = qcompile.load(str(tmp_path / "digits")).run(inputs)["logits"]
    np.testing.assert_array_equal(again, ours)


def test_artifact_metadata(tmp_path):
    out = tmp_path / "a"
    qcompile.compile(zoo.DIGITS_MODEL, target="x86_64", out_dir=str(out))
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["inputs"] == [{"name": "input", "shape": [1, 1, 8, 8], "dtype": "float32"}]
    assert meta["outputs"] == [{"name": "logits", "shape": [1, 10], "dtype": "float32"}]
    assert meta["target"]["name"] == "x86_64" and meta["target"]["tvm_target"]["kind"] == "llvm"
    assert meta["versions"]["apache-tvm"] == "0.27.0.post1"
    import hashlib

    assert meta["model"]["sha256"] == hashlib.sha256(open(zoo.DIGITS_MODEL, "rb").read()).hexdigest()
    assert meta["quantization"] is None
    assert os.path.getsize(out / meta["library"]) > 0
    assert sorted(os.listdir(tmp_path)) == ["a"]  # no temp folders left


def test_input_shape_fixes_dynamic_batch(tmp_path):
    art = qcompile.compile(make_conv_model(batch="N"), input_shapes=["x:4x3x8x8"])
    assert art.inputs[0].shape == (4, 3, 8, 8) and art.outputs[0].shape == (4, 5)
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    assert rel_max_diff(art.run({"x": x})["y"], ort_run(make_conv_model(), {"x": x})[0]) <= 1e-4


def test_dynamic_shape_graph_is_simplified_on_import():
    """Reshape fed by Shape->Gather->Concat (what exporters emit for flatten) imports once shapes are fixed."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["shape2"], axis=0),
        helper.make_node("Reshape", ["x", "shape2"], ["flat"]),
        helper.make_node("ConstantOfShape", ["s"], ["ones"], value=numpy_helper.from_array(np.array([2.0], np.float32))),
        helper.make_node("Mul", ["x", "ones"], ["x2"]),
        helper.make_node("Reshape", ["x2", "shape2"], ["flat2"]),
        helper.make_node("Add", ["flat", "flat2"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array([0], np.int64), "axes0"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus1")]
    graph = helper.make_graph(nodes, "dyn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3, "H", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", None])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    art = qcompile.compile(model, input_shapes={"x": (2, 3, 5, 4)})
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 4)).astype(np.float32)
    np.testing.assert_allclose(art.run({"x": x})["y"], ort_run(model, {"x": x})[0], rtol=1e-5, atol=1e-5)


FAST_LIGHT = ["squeezenet", "inception_v1", "zfnet512", "bvlc_alexnet"]
SLOW_LIGHT = ["shufflenet", "resnet50", "densenet121", "inception_v2", "vgg19"]


@pytest.mark.parametrize("name", FAST_LIGHT + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW_LIGHT])
def test_light_model_matches_ort(name):
    model = zoo.light_model(name, seed=0)
    art = qcompile.compile(model, target="auto")
    x = np.random.default_rng(1).random(art.inputs[0].shape).astype(np.float32)
    ours = list(art.run({art.inputs[0].name: x}).values())
    ref = ort_run(model, {art.inputs[0].name: x})
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert a.shape == b.shape
        assert rel_max_diff(a, b) <= 1e-4, name
    assert np.std(ref[0]) > 0, "random weights must give a non-constant output"


def test_light_model_randomization_changes_weights():
    model = zoo.light_model("squeezenet", seed=0)
    assert not any(n.op_type == "ConstantOfShape" for n in model.graph.node)
    other = zoo.light_model("squeezenet", seed=1)
    from onnx import numpy_helper

    a = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    b = {i.name: numpy_helper.to_array(i) for i in other.graph.initializer}
    import onnx

    original = onnx.load(os.path.join(zoo.light_dir(), "light_squeezenet.onnx"))
    weights = [n.output[0] for n in original.graph.node if n.op_type == "ConstantOfShape" and a[n.output[0]].size > 1]
    assert weights and all(not np.array_equal(a[n], b[n]) for n in weights)


def test_cli_compile_run_bench_info(tmp_path):
    out = tmp_path / "digits"
    proc = run_cli("compile", zoo.DIGITS_MODEL, "--target", "auto", "-o", out)
    assert proc.returncode == 0, proc.stderr
    y = tmp_path / "y.npz"
    proc = run_cli("run", out, "--inputs", zoo.DIGITS_TEST, "--output", y)
    assert proc.returncode == 0, proc.stderr
    inputs, labels = zoo.digits_test()
    logits = np.load(y)["logits"]
    assert np.abs(logits - ort_run(zoo.DIGITS_MODEL, inputs)[0]).max() <= 1e-4
    res = tmp_path / "bench.json"
    proc = run_cli("bench", out, "--threads", "1", "--warmup", "2", "--repeat", "20", "--json", res)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(res.read_text())
    for key in ("median_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "repeat", "threads", "target"):
        assert key in r
    assert r["repeat"] == 20 and r["threads"] == 1 and 0 < r["median_ms"] <= r["p99_ms"]
    proc = run_cli("info", out)
    assert proc.returncode == 0 and "logits" in proc.stdout and "x86" in proc.stdout
    proc = run_cli("info", zoo.DIGITS_MODEL)
    assert proc.returncode == 0 and "relax.nn.conv2d" in proc.stdout
    proc = run_cli("targets")
    assert proc.returncode == 0 and "x86_vnni" in proc.stdout and "x86_64" in proc.stdout
