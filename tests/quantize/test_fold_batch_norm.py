"""FoldBatchNorm (qcompile/transform/fold_batch_norm.py): BatchNormalization and per-channel scale/shift
after conv2d/matmul end up in the weights and one bias add before annotate, so the quantizer takes weight
ranges after folding and the conv stays in the integer domain; checked on small ONNX models against ONNX
Runtime, bit-exact against the numpy reference in int8, and on the onnx wheel's light ResNet-50."""

from collections import Counter

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

import qcompile
from qcompile import zoo
from qcompile.frontend import load
from qcompile.pipeline import preprocess_passes
from qcompile.quantize.qconfig import QConfig

from .test_realize import conv_reference_codes, float_calls, out_codes

RNG = np.random.default_rng(7)
C = 6


def onnx_model(nodes, inits: dict, x_shape, opset=14, outputs=("y",)):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def bn_params(prefix, c):
    return {f"{prefix}_g": RNG.uniform(0.5, 1.5, c), f"{prefix}_b": RNG.standard_normal(c) * 0.1,
            f"{prefix}_m": RNG.standard_normal(c) * 0.1, f"{prefix}_v": RNG.uniform(0.5, 1.5, c)}


def bn_node(x, y, prefix):
    return helper.make_node("BatchNormalization", [x] + [f"{prefix}_{k}" for k in "gbmv"], [y], epsilon=1e-3)


def preprocessed(model):
    mod = load(model, None).mod
    with tvm.transform.PassContext(opt_level=3):
        for p in preprocess_passes():
            mod = p(mod)
    return mod


def op_counts(mod) -> Counter:
    ops = Counter()
    relax.analysis.post_order_visit(
        mod["main"],
        lambda e: ops.update([e.op.name]) if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) else None)
    return ops


def ort_run(model, x):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def conv_bn_model(groups=1, bias=True, scale_shift=False, relu=False):
    """Conv (+bias) -> BatchNormalization (-> Mul, Add by (C,1,1) constants) (-> Relu)."""
    inits = {"w": RNG.standard_normal((C, 6 // groups, 3, 3)) * 0.4, **bn_params("bn", C)}
    conv_in = ["x", "w"] + (["cb"] if bias else [])
    if bias:
        inits["cb"] = RNG.standard_normal(C) * 0.1
    nodes = [helper.make_node("Conv", conv_in, ["c"], pads=[1, 1, 1, 1], group=groups), bn_node("c", "bn", "bn")]
    last = "bn"
    if scale_shift:
        inits["s"], inits["t"] = RNG.uniform(0.5, 2.0, (C, 1, 1)), RNG.standard_normal((C, 1, 1)) * 0.1
        nodes += [helper.make_node("Mul", ["bn", "s"], ["bs"]), helper.make_node("Add", ["t", "bs"], ["bt"])]
        last = "bt"
    if relu:
        nodes.append(helper.make_node("Relu", [last], ["r"]))
        last = "r"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    return onnx_model(nodes, inits, (1, 6, 7, 7)), inits


def folded_weight(inits, eps=1e-3):
    s = inits["bn_g"] / np.sqrt(inits["bn_v"] + eps)
    if "s" in inits:
        s = s * inits["s"].reshape(-1)
    return (inits["w"] * s.reshape(-1, 1, 1, 1)).astype(np.float32)


@pytest.mark.parametrize("groups, bias, scale_shift", [(1, True, False), (1, False, True), (2, True, True),
                                                       (6, False, False)])
def test_conv_batch_norm_scale_shift_fold_into_weights(groups, bias, scale_shift):
    model, inits = conv_bn_model(groups, bias, scale_shift)
    ops = op_counts(preprocessed(model))
    assert ops == Counter({"relax.nn.conv2d": 1, "relax.add": 1}), ops
    x = RNG.standard_normal((1, 6, 7, 7)).astype(np.float32)
    np.testing.assert_allclose(qcompile.compile(model).run({"x": x})["y"], ort_run(model, x), rtol=1e-4, atol=1e-4)
    # the quantizer sees the folded weight: its per-channel ranges are taken after folding
    pipe = qcompile.Pipeline(qconfig=QConfig(calib_method="minmax", safety_net=False, float_outputs=False, bias_correction=False), progress=False)
    pipe.run(model, calib={"x": RNG.standard_normal((4, 6, 7, 7)).astype(np.float32)})
    (layer,) = pipe.state.quant_info["plan"].layers
    np.testing.assert_allclose(layer.weight, folded_weight(inits), rtol=1e-5, atol=1e-6)


def test_gemm_and_matmul_scale_shift_fold_per_column():
    """Gemm (transB, bias) -> Mul/Add per column, and MatMul -> BatchNormalization over the features."""
    inits = {"w1": RNG.standard_normal((8, 5)), "b1": RNG.standard_normal(8), "s": RNG.uniform(0.5, 2, 8),
             "t": RNG.standard_normal((1, 8)), "w2": RNG.standard_normal((8, 4)), **bn_params("bn", 4)}
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["g"], transB=1),
             helper.make_node("Mul", ["g", "s"], ["gs"]), helper.make_node("Sub", ["gs", "t"], ["gt"]),
             helper.make_node("MatMul", ["gt", "w2"], ["m"]), bn_node("m", "y", "bn")]
    model = onnx_model(nodes, inits, (3, 5))
    ops = op_counts(preprocessed(model))
    assert ops == Counter({"relax.matmul": 2, "relax.add": 2}), ops
    x = RNG.standard_normal((3, 5)).astype(np.float32)
    np.testing.assert_allclose(qcompile.compile(model).run({"x": x})["y"], ort_run(model, x), rtol=1e-4, atol=1e-4)


def test_conv_read_elsewhere_is_not_folded():
    """The conv output also feeds a second consumer: folding would change what that one reads."""
    inits = {"w": RNG.standard_normal((C, 6, 3, 3)), **bn_params("bn", C)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), bn_node("c", "bn", "bn"),
             helper.make_node("Add", ["bn", "c"], ["y"])]
    model = onnx_model(nodes, inits, (1, 6, 7, 7))
    assert op_counts(preprocessed(model))["relax.multiply"] == 1
    x = RNG.standard_normal((1, 6, 7, 7)).astype(np.float32)
    np.testing.assert_allclose(qcompile.compile(model).run({"x": x})["y"], ort_run(model, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("act", ["uint8", "int8"])
def test_conv_batch_norm_int8_is_one_integer_layer_bit_exact(act):
    model, inits = conv_bn_model(groups=2, bias=True, scale_shift=True, relu=True)
    captured = {}
    pipe = qcompile.Pipeline(qconfig=QConfig(calib_method="minmax", safety_net=False, float_outputs=False, bias_correction=False, activation_dtype=act),
                             progress=False)
    pipe.add_pass(lambda mod: captured.setdefault("mod", mod), after="realize")
    art = pipe.run(model, calib={"x": RNG.standard_normal((8, 6, 7, 7)).astype(np.float32)})
    assert float_calls(captured["mod"]) == ["relax.dequantize"]  # float only where the model's output leaves
    state = pipe.state
    (layer,) = state.quant_info["plan"].layers
    x = RNG.standard_normal((1, 6, 7, 7)).astype(np.float32)
    s = inits["bn_g"] / np.sqrt(inits["bn_v"] + 1e-3) * inits["s"].reshape(-1)
    bias = (inits["cb"] - inits["bn_m"]) * s + inits["bn_b"] * inits["s"].reshape(-1) + inits["t"].reshape(-1)
    expected, (so, zo) = conv_reference_codes(state, layer, x, folded_weight(inits), layer.bias, 1, 1, 1, 2, True)
    np.testing.assert_allclose(layer.bias, bias, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out_codes(art.run({"x": x})["y"], so, zo), expected)


def test_light_resnet50_preprocess_folds_every_batch_norm_and_sum():
    mod = preprocessed(zoo.light_model("resnet50"))
    ops = op_counts(mod)
    assert ops["relax.nn.conv2d"] == 53 and ops["relax.matmul"] == 1
    # 53 folded biases, 16 residual Sums, the Gemm's bias; no BN arithmetic and no stack/sum left
    assert ops["relax.add"] == 53 + 16 + 1
    for op in ("relax.nn.batch_norm", "relax.subtract", "relax.divide", "relax.multiply", "relax.stack",
               "relax.sum", "relax.broadcast_to"):
        assert ops[op] == 0, op


def test_light_resnet50_int8_keeps_no_float_op_between_integer_layers():
    """The int8 realization of light ResNet-50 computes in float only after its last integer layer
    (the old preprocess left 382 float ops: BN arithmetic, stack+sum, a dequantize/quantize per conv)."""
    from benchmarks.float_islands import realized_ops, summarize

    row = summarize(*realized_ops(zoo.light_model("resnet50"), preprocess_passes(), samples=1))
    # after the last layer (the Gemm, which writes float(acc) * scale: float_outputs): its reshapes and softmax
    assert row["float_by_op"] == {"relax.astype": 1, "relax.multiply": 1, "relax.reshape": 2,
                                  "relax.nn.softmax": 1}, row
    assert row["quantize"] == 1 and row["integer_layers"] == 73  # the reshape after the Gemm reads float


@pytest.mark.parametrize("act, relu", [("uint8", True), ("int8", False), ("int16", True)])
def test_batch_norm_without_conv_is_an_integer_scale_shift_bit_exact(act, relu):
    """DenseNet's pre-activation: Concat -> BatchNormalization (-> Mul/Add) -> Relu, with no conv before the BN
    to fold into, becomes x * s + t, one integer layer (rules/scale_shift.py), bit-exact against
    reference.scale_shift; negative and positive scales alike."""
    from qcompile.quantize import reference
    from qcompile.quantize.realize import clamp_bounds

    from .test_realize import qparams_of

    signs = np.array([1, -1] * (C // 2)).reshape(C, 1, 1)
    inits = {**bn_params("bn", C), "s": RNG.uniform(0.5, 2.0, (C, 1, 1)) * signs,
             "t": RNG.standard_normal((C, 1, 1)) * 0.1}
    nodes = [helper.make_node("Concat", ["x", "x"], ["c"], axis=1), bn_node("c", "b", "bn"),
             helper.make_node("Mul", ["b", "s"], ["bs"]), helper.make_node("Add", ["bs", "t"], ["bt"]),
             helper.make_node("Relu" if relu else "Identity", ["bt"], ["y"])]
    model = onnx_model(nodes, inits, (1, C // 2, 5, 5))
    qkw = {"precision": "int16"} if act == "int16" else {"activation_dtype": act}
    pipe = qcompile.Pipeline(qconfig=QConfig(calib_method="minmax", safety_net=False, float_outputs=False, bias_correction=False, **qkw), progress=False)
    art = pipe.run(model, calib={"x": RNG.standard_normal((8, C // 2, 5, 5)).astype(np.float32)})
    state = pipe.state
    layer = state.quant_info["plan"].layers[-1]
    assert layer.name == "scale_shift_0" and layer.name in state.quant_info["realized"]
    s = inits["bn_g"] / np.sqrt(inits["bn_v"] + 1e-3) * inits["s"].reshape(-1)
    t = (inits["bn_b"] - inits["bn_m"] * inits["bn_g"] / np.sqrt(inits["bn_v"] + 1e-3)) * inits["s"].reshape(-1) \
        + inits["t"].reshape(-1)
    np.testing.assert_allclose(layer.weight, s, rtol=1e-6)
    np.testing.assert_allclose(layer.bias, t, rtol=1e-5, atol=1e-6)
    x = RNG.standard_normal((1, C // 2, 5, 5)).astype(np.float32)
    sx, zx = qparams_of(state, layer.inputs[0])
    so, zo = qparams_of(state, layer.out)
    q = reference.quantize(np.concatenate([x, x], axis=1), sx, zx, act)
    lo, hi = clamp_bounds(so, zo, act, (0.0, None) if relu else None)
    expected = reference.scale_shift(q, sx, zx, layer.weight, layer.bias, so, zo, lo, hi)
    np.testing.assert_array_equal(out_codes(art.run({"x": x})["y"], so, zo), expected)
    np.testing.assert_allclose(art.run({"x": x})["y"], ort_run(model, x), atol=8 * so)
