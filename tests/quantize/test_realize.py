"""Realize: the compiled integer layers agree bit-exactly with the numpy reference,
realized regions hold no float arithmetic, and the bundled model keeps its accuracy."""

import numpy as np
import pytest
import tvm
from tvm import relax

import qcompile
from qcompile import zoo
from qcompile.errors import CalibrationError
from qcompile.model import Model, TensorSpec
from qcompile.quantize import fixed_point, reference
from qcompile.quantize.observers import choose_qparams
from qcompile.quantize.qconfig import QConfig
from qcompile.quantize.weights import fold_bias, quantize_weight

RNG = np.random.default_rng(0)


def relax_model(inputs, build):
    """A Model whose main is built by build(bb, *input_vars) -> output expr (float32)."""
    bb = relax.BlockBuilder()
    vars_ = [relax.Var(n, relax.TensorType(s, "float32")) for n, s in inputs]
    with bb.function("main", vars_):
        with bb.dataflow():
            out = build(bb, *vars_)
            gv = bb.emit_output(out)
        bb.emit_func_output(gv)
    mod = bb.get()
    specs = [TensorSpec(n, tuple(s), "float32") for n, s in inputs]
    ret = mod["main"].ret_ty
    return Model(mod, specs, [TensorSpec("y", tuple(int(d) for d in ret.shape.values), "float32")])


def compile_quantized(model, calib, **qkw):
    """Integer outputs at the model's exit and the layers' own biases (bias correction off), so the numpy
    reference of the integer rules can be compared code for code."""
    pipe = qcompile.Pipeline(target="auto", qconfig=QConfig(**{"float_outputs": False, "bias_correction": False,
                                                               **qkw}))
    art = pipe.run(model, calib=calib)
    return art, pipe.state


def cosine(a, b):
    """Cosine of two arrays, flattened (float64)."""
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def out_codes(y, scale, zp):
    return np.rint(y.astype(np.float64) / scale).astype(np.int64) + zp


def qparams_of(state, var):
    qc = state.quant_info["qconfig"]
    lo, hi = state.quant_info["ranges"][var]
    return choose_qparams(lo, hi, qc.activation_dtype if qc.precision == "int8" else "int16", bool(qc.symmetric_activations))


CONV_CASES = [
    dict(c_in=3, c_out=8, k=3, stride=1, pad=1, dil=1, groups=1, relu=True),
    dict(c_in=4, c_out=6, k=3, stride=2, pad=1, dil=1, groups=2, relu=False),
    dict(c_in=8, c_out=8, k=3, stride=1, pad=2, dil=2, groups=8, relu=True),   # depthwise, dilated
    dict(c_in=5, c_out=7, k=1, stride=1, pad=0, dil=1, groups=1, relu=False),
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("qkw", [dict(activation_dtype="uint8"), dict(activation_dtype="int8", per_channel=False),
                                 dict(precision="int16")])
def test_conv2d_bit_exact_against_reference(case, qkw):
    c = case
    w = RNG.standard_normal((c["c_out"], c["c_in"] // c["groups"], c["k"], c["k"])).astype(np.float32)
    b = RNG.standard_normal(c["c_out"]).astype(np.float32)

    def build(bb, x):
        y = bb.emit(relax.op.nn.conv2d(x, relax.const(w), strides=c["stride"], padding=c["pad"],
                                       dilation=c["dil"], groups=c["groups"]))
        y = bb.emit(relax.op.add(y, relax.const(b.reshape(1, -1, 1, 1))))
        return bb.emit(relax.op.nn.relu(y)) if c["relu"] else y

    model = relax_model([("x", (2, c["c_in"], 9, 9))], build)
    calib = {"x": RNG.standard_normal((8, c["c_in"], 9, 9)).astype(np.float32) + 0.3}
    art, state = compile_quantized(model, calib, calib_method="minmax", **qkw)
    plan = state.quant_info["plan"]
    assert [l.op for l in plan.layers] == ["relax.nn.conv2d"]

    x = RNG.standard_normal((2, c["c_in"], 9, 9)).astype(np.float32) * 1.2
    expected, (so, zo) = conv_reference_codes(state, plan.layers[0], x, w, b, c["stride"], c["pad"], c["dil"],
                                              c["groups"], c["relu"])
    got = out_codes(art.run({"x": x})["y"], so, zo)
    np.testing.assert_array_equal(got, expected)


def conv_reference_codes(state, layer, x, w, b, stride, pad, dil, groups, relu):
    """(the output codes numpy's integer semantics give conv2d layer `layer` on float input x with float
    weight w and bias b, the output's (scale, zero point))."""
    from qcompile.quantize.realize import clamp_bounds

    qc = state.quant_info["qconfig"]
    a_dtype = "int16" if qc.precision == "int16" else qc.activation_dtype
    w_dtype = "int16" if qc.precision == "int16" else qc.weight_dtype
    sx, zx = qparams_of(state, layer.inputs[0])
    so, zo = qparams_of(state, layer.out)
    x_q = reference.quantize(x, sx, zx, a_dtype)
    w_scale, w_q = quantize_weight(w, w_dtype, qc, axis=0)
    acc = reference.qconv2d(x_q, zx, w_q, 0, stride=stride, padding=pad, dilation=dil, groups=groups)
    bias_q = fold_bias(b, sx * w_scale.astype(np.float64), zx, w_q.reshape(w_q.shape[0], -1).sum(1))
    # the reference accumulator already subtracts x_zp; fold_bias took x_zp * sum(w_q) out for the kernel
    acc = acc + (bias_q + zx * w_q.reshape(w_q.shape[0], -1).sum(1)).reshape(1, -1, 1, 1)
    m = sx * w_scale.astype(np.float64) / so
    bound = fixed_point.acc_bound(int(np.prod(w_q.shape[1:])), a_dtype, w_dtype, zx, 0) + int(np.abs(bias_q).max())
    bits = fixed_point.multiplier_bits_for(bound) if w_dtype == "int16" else 31
    mult, shift = fixed_point.quantize_multiplier(m, bits=bits)
    lo, hi = clamp_bounds(so, zo, a_dtype, (0.0, None) if relu else None)
    return fixed_point.requantize(acc, mult, shift, zo, lo, hi, axis=1), (so, zo)


def test_dense_add_mean_maxpool_bit_exact():
    """A chain conv -> maxpool -> mean -> reshape -> dense, plus a residual add: the final codes match
    a step-by-step numpy evaluation of the same integer rules."""
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    fc = RNG.standard_normal((4, 5)).astype(np.float32)
    fcb = RNG.standard_normal(5).astype(np.float32)

    def build(bb, x, r):
        y = bb.emit(relax.op.nn.conv2d(x, relax.const(w), padding=1))
        y = bb.emit(relax.op.nn.relu(y))
        y = bb.emit(relax.op.nn.max_pool2d(y, (2, 2), strides=(2, 2)))
        y = bb.emit(relax.op.add(y, r))
        y = bb.emit(relax.op.mean(y, axis=[2, 3], keepdims=False))
        y = bb.emit(relax.op.matmul(y, relax.const(fc)))
        return bb.emit(relax.op.add(y, relax.const(fcb)))

    model = relax_model([("x", (1, 3, 8, 8)), ("r", (1, 4, 4, 4))], build)
    calib = {"x": RNG.standard_normal((16, 3, 8, 8)).astype(np.float32),
             "r": RNG.standard_normal((16, 4, 4, 4)).astype(np.float32)}
    art, state = compile_quantized(model, calib, calib_method="minmax", activation_dtype="uint8")
    plan = state.quant_info["plan"]
    assert [l.name for l in plan.layers] == ["conv2d_0", "max_pool2d_0", "add_0", "mean_0", "matmul_0"]
    assert set(state.quant_info["realized"]) == {l.name for l in plan.layers}
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    r = RNG.standard_normal((1, 4, 4, 4)).astype(np.float32)
    qp = {l.name: qparams_of(state, l.out) for l in plan.layers if l.name != "max_pool2d_0"}
    conv, _, add, mean, dense = plan.layers
    sx, zx = qparams_of(state, conv.inputs[0])
    sr, zr = qparams_of(state, add.inputs[1])
    qc = state.quant_info["qconfig"]

    ws, wq = quantize_weight(w, "int8", qc, axis=0)
    acc = reference.qconv2d(reference.quantize(x, sx, zx, "uint8"), zx, wq, 0, padding=1)
    acc = acc + fold_bias(None, sx * ws.astype(np.float64), 0, wq.reshape(4, -1).sum(1)).reshape(1, -1, 1, 1)
    s1, z1 = qp["conv2d_0"]
    m, sh = fixed_point.quantize_multiplier(sx * ws.astype(np.float64) / s1)
    c1 = fixed_point.requantize(acc, m, sh, z1, z1, 255, axis=1)
    p1 = c1.reshape(1, 4, 4, 2, 4, 2).max(axis=(3, 5))
    s2, z2 = qp["add_0"]
    a2 = reference.add_requantized(p1, s1, z1, reference.quantize(r, sr, zr, "uint8"), sr, zr, s2, z2, "uint8")
    s3, z3 = qp["mean_0"]
    total = a2.astype(np.int64).sum(axis=(2, 3)) - 16 * z2
    m, sh = fixed_point.quantize_multiplier(s2 / 16 / s3)
    c3 = fixed_point.requantize(total, m, sh, z3, 0, 255)
    fs, fq = quantize_weight(fc, "int8", qc, axis=1)
    acc = reference.qmatmul(c3, z3, fq, 0) + fold_bias(fcb, s3 * fs.astype(np.float64), 0, fq.sum(0))
    s4, z4 = qp["matmul_0"]
    m, sh = fixed_point.quantize_multiplier(s3 * fs.astype(np.float64) / s4)
    expected = fixed_point.requantize(acc, m, sh, z4, 0, 255, axis=-1)
    got = out_codes(art.run({"x": x, "r": r})["y"], s4, z4)
    np.testing.assert_array_equal(got, expected)


def realized_module(model_path, **qkw):
    captured = {}
    pipe = qcompile.Pipeline(target="auto", qconfig=QConfig(**qkw))
    pipe.add_pass(lambda mod: captured.setdefault("mod", mod), after="realize")
    art = pipe.run(model_path, calib=zoo.digits_calib())
    return captured["mod"], art


def float_calls(mod):
    found = []

    def visit(e):
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and isinstance(e.ty, relax.TensorType):
            if str(e.ty.dtype).startswith("float"):
                found.append(e.op.name)

    relax.analysis.post_order_visit(mod["main"], visit)
    return found


@pytest.mark.parametrize("act", ["int8", "uint8"])
def test_digits_realized_has_no_float_arithmetic(act):
    mod, _ = realized_module(zoo.DIGITS_MODEL, activation_dtype=act)
    # float only at the exit: the last dense layer writes float(acc) * scale (float_outputs);
    # quantize produces ints
    assert float_calls(mod) == ["relax.astype", "relax.multiply"]
    mod, _ = realized_module(zoo.DIGITS_MODEL, activation_dtype=act, float_outputs=False)
    assert float_calls(mod) == ["relax.dequantize"]  # without: requantized codes, then dequantize
    ops = []
    relax.analysis.post_order_visit(mod["main"], lambda e: ops.append(e.op.name) if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) else None)
    assert ops.count("relax.quantize") == 1 and ops.count("relax.nn.conv2d") == 4 and ops.count("relax.matmul") == 1


def test_digits_int8_accuracy_and_determinism():
    inputs, labels = zoo.digits_test()
    art = qcompile.compile(zoo.DIGITS_MODEL, qconfig=QConfig(), calib=zoo.digits_calib())
    from qcompile.runtime.bench import set_threads

    set_threads(1)
    y1 = art.run(inputs)["logits"]
    set_threads(2)
    y2 = art.run(inputs)["logits"]
    np.testing.assert_array_equal(y1, y2)
    fp32 = qcompile.compile(zoo.DIGITS_MODEL).run(inputs)["logits"]
    drop = (fp32.argmax(1) == labels).mean() - (y1.argmax(1) == labels).mean()
    assert drop <= 0.01
    assert art.metadata["quantization"]["integer_layers"] == 9


def test_unknown_ops_stay_fp32_between_integer_layers():
    w1 = RNG.standard_normal((6, 3, 3, 3)).astype(np.float32)
    w2 = RNG.standard_normal((4, 6, 1, 1)).astype(np.float32)

    def build(bb, x):
        y = bb.emit(relax.op.nn.conv2d(x, relax.const(w1), padding=1))
        y = bb.emit(relax.op.sigmoid(y))
        y = bb.emit(relax.op.nn.conv2d(y, relax.const(w2)))
        return bb.emit(relax.op.nn.softmax(y, axis=1))

    model = relax_model([("x", (1, 3, 6, 6))], build)
    calib = {"x": RNG.standard_normal((8, 3, 6, 6)).astype(np.float32)}
    art, state = compile_quantized(model, calib)
    assert set(state.quant_info["realized"]) == {"conv2d_0", "conv2d_1"}
    x = RNG.standard_normal((1, 3, 6, 6)).astype(np.float32)
    ref = qcompile.compile(model).run({"x": x})["y"]
    assert np.abs(art.run({"x": x})["y"] - ref).max() < 0.05


def test_keep_fp32_patterns():
    _, art = realized_module(zoo.DIGITS_MODEL, keep_fp32=["conv2d_0", "re:matmul_.*"])
    layers = art.metadata["quantization"]["layers"]
    assert layers["conv2d_0"] == "fp32" and layers["matmul_0"] == "fp32" and layers["conv2d_1"] == "int8"


@pytest.mark.parametrize("calib, needle", [
    ({"inp": np.zeros((4, 1, 8, 8), np.float32)}, "unknown ['inp'], missing ['input']"),
    ({"input": np.zeros((4, 1, 8, 9), np.float32)}, "shape [4, 1, 8, 9]"),
    ({"input": np.zeros((4, 1, 8, 8), np.float64)}, "dtype float64"),
    ({"input": np.full((4, 1, 8, 8), np.nan, np.float32)}, "256 NaN/Inf"),
    ({"input": np.zeros((0, 1, 8, 8), np.float32)}, "0 samples"),
    (None, "needs calibration data"),
])
def test_bad_calibration_data(calib, needle):
    with pytest.raises(CalibrationError) as err:
        qcompile.compile(zoo.DIGITS_MODEL, qconfig=QConfig(), calib=calib)
    assert needle in str(err.value)


def test_keep_fp32_by_onnx_node_name():
    _, art = realized_module(zoo.DIGITS_MODEL, keep_fp32=["/depthwise/Conv", "re:.*pointwise.*"])
    layers = art.metadata["quantization"]["layers"]
    assert layers["conv2d_2"] == "fp32" and layers["conv2d_3"] == "fp32" and layers["conv2d_0"] == "int8"


def test_power_of_two_scales_make_shift_only_requantize():
    from qcompile.quantize.realize import Realizer

    pipe = qcompile.Pipeline(qconfig=QConfig(power_of_two_scales=True, symmetric_activations=True))
    art = pipe.run(zoo.DIGITS_MODEL, calib=zoo.digits_calib())
    st = pipe.state
    rz = Realizer(st.quant_info["plan"], st.quant_info["ranges"], st.quant_info["qconfig"])
    scales = [rz.qparams(v, "int8")[0] for v in st.quant_info["ranges"]]
    assert all(np.log2(s) == np.round(np.log2(s)) for s in scales)
    w_scale, _ = quantize_weight(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "int8",
                                 st.quant_info["qconfig"], axis=0)
    mult, _ = fixed_point.quantize_multiplier(scales[0] * w_scale.astype(np.float64) / scales[1])
    assert (np.asarray(mult) == 2**30).all()  # M = 2^k exactly: the multiply is a pure shift
    inputs, labels = zoo.digits_test()
    assert (art.run(inputs)["logits"].argmax(1) == labels).mean() >= 0.97


@pytest.mark.parametrize("relu", [True, False])
def test_conv2d_float_output_bit_exact(relu):
    """float_outputs (the default): a conv read only by float ops writes float32(acc) * (s_x * s_w[c]),
    then its ReLU in float, bit for bit as reference.dequantize of the integer accumulator."""
    w = RNG.standard_normal((6, 3, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(6).astype(np.float32)

    def build(bb, x):
        y = bb.emit(relax.op.nn.conv2d(x, relax.const(w), padding=1))
        y = bb.emit(relax.op.add(y, relax.const(b.reshape(1, -1, 1, 1))))
        return bb.emit(relax.op.nn.relu(y)) if relu else y

    model = relax_model([("x", (2, 3, 9, 9))], build)
    calib = {"x": RNG.standard_normal((8, 3, 9, 9)).astype(np.float32) + 0.3}
    pipe = qcompile.Pipeline(target="auto", qconfig=QConfig(calib_method="minmax", safety_net=False, bias_correction=False))
    art = pipe.run(model, calib=calib)
    state = pipe.state
    (layer,) = state.quant_info["plan"].layers
    assert layer.attrs.get("float_out") and layer.out not in state.quant_info["ranges"]

    qc = state.quant_info["qconfig"]
    x = RNG.standard_normal((2, 3, 9, 9)).astype(np.float32)
    sx, zx = qparams_of(state, layer.inputs[0])
    x_q = reference.quantize(x, sx, zx, qc.activation_dtype)
    w_scale, w_q = quantize_weight(w, qc.weight_dtype, qc, axis=0)
    acc_scale = sx * w_scale.astype(np.float64)
    sums = w_q.reshape(6, -1).sum(1)
    acc = reference.qconv2d(x_q, zx, w_q, 0, padding=1) + (fold_bias(b, acc_scale, zx, sums) + zx * sums).reshape(1, -1, 1, 1)
    expected = reference.dequantize(acc, acc_scale.astype(np.float32), 0, axis=1)
    if relu:
        expected = np.maximum(expected, np.float32(0))
    np.testing.assert_array_equal(art.run({"x": x})["y"], expected)
