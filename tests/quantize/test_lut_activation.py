"""HardSwish, HardSigmoid and SiLU, as the ONNX frontend decomposes them, become one integer layer: a
lookup table on the codes (quantize/rules/lookup.py), bit-exact against reference.lut_table/lut_apply
with the activation written out in numpy here."""

import numpy as np
import pytest
from onnx import helper
from tvm import relax

import qcompile
from qcompile.quantize import reference
from qcompile.quantize.qconfig import QConfig

from .test_fold_batch_norm import onnx_model
from .test_realize import float_calls, out_codes, qparams_of, relax_model

RNG = np.random.default_rng(5)
SHAPE = (1, 4, 6, 6)


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


# name -> (ONNX nodes x -> y, constants, numpy function, layer name)
ACTIVATIONS = {
    "hardswish": ([helper.make_node("HardSwish", ["x"], ["y"])], {},
                  lambda v: v * np.minimum(np.maximum(v + 3, 0), 6) / 6, "hardswish_0"),
    "hardsigmoid": ([helper.make_node("HardSigmoid", ["x"], ["y"], alpha=0.25, beta=0.4)], {},
                    lambda v: np.minimum(np.maximum(0.25 * v + 0.4, 0), 1), "hardsigmoid_0"),
    "hardsigmoid_torch": (None, {}, lambda v: np.minimum(np.maximum(v + 3, 0), 6) / 6, "hardsigmoid_0"),
    "silu": ([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])], {},
             lambda v: v * _sigmoid(v), "silu_0"),
}


def torch_hardsigmoid(bb, x):
    """What the torch frontend emits for nn.Hardsigmoid (base_fx_graph_translator._hardsigmoid).
    (ONNX Clip with min/max inputs imports as call_tir maximum/minimum, which no rule reads.)"""
    y = bb.emit(relax.op.add(x, relax.const(3.0, "float32")))
    y = bb.emit(relax.op.clip(y, 0, 6))
    return bb.emit(relax.op.divide(y, relax.const(6.0, "float32")))


def compile_activation(name, **qkw):
    nodes, consts, _, _ = ACTIVATIONS[name]
    model = onnx_model(nodes, consts, SHAPE) if nodes else relax_model([("x", SHAPE)], torch_hardsigmoid)
    captured = {}
    pipe = qcompile.Pipeline(qconfig=QConfig(calib_method="minmax", safety_net=False, float_outputs=False, bias_correction=False, **qkw), progress=False)
    pipe.add_pass(lambda mod: captured.setdefault("mod", mod), after="realize")
    art = pipe.run(model, calib={"x": RNG.standard_normal((8,) + SHAPE[1:]).astype(np.float32) * 3})
    return art, pipe.state, captured["mod"]


@pytest.mark.parametrize("name", list(ACTIVATIONS))
@pytest.mark.parametrize("qkw", [dict(activation_dtype="uint8"), dict(activation_dtype="int8"),
                                 dict(precision="int16")])
def test_activation_is_a_lookup_table_bit_exact(name, qkw):
    art, state, mod = compile_activation(name, **qkw)
    _, _, fn, layer_name = ACTIVATIONS[name]
    (layer,) = state.quant_info["plan"].layers
    assert layer.name == layer_name and layer_name in state.quant_info["realized"]
    assert float_calls(mod) == ["relax.dequantize"]  # quantize the input, look up, dequantize the output
    dtype = "int16" if qkw.get("precision") == "int16" else qkw["activation_dtype"]
    sx, zx = qparams_of(state, layer.inputs[0])
    so, zo = qparams_of(state, layer.out)
    x = np.concatenate([RNG.standard_normal((1,) + SHAPE[1:]) * 3, np.linspace(-12, 12, np.prod(SHAPE))
                        .reshape(SHAPE)]).astype(np.float32)
    table = reference.lut_table(fn, sx, zx, so, zo, dtype)
    assert table.shape == (256 if dtype != "int16" else 65536,)
    for sample in x:
        expected = reference.lut_apply(reference.quantize(sample[None], sx, zx, dtype), table)
        np.testing.assert_array_equal(out_codes(art.run({"x": sample[None]})["y"], so, zo), expected)


def test_lone_sigmoid_and_linear_chains_are_not_tables():
    """A sigmoid alone keeps what it had (no rule: fp32), and so does x * 0.5 + 1: only chains with a
    nonlinearity become tables (sigmoid(x) * 0.5 + 1 would be one, named pointwise_0)."""
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "half"], ["m"]),
             helper.make_node("Add", ["m", "one"], ["l"]), helper.make_node("Add", ["s", "l"], ["y"])]
    model = onnx_model(nodes, {"half": np.float32(0.5), "one": np.float32(1.0)}, SHAPE)
    pipe = qcompile.Pipeline(qconfig=QConfig(calib_method="minmax", safety_net=False, float_outputs=False, bias_correction=False), progress=False)
    pipe.run(model, calib={"x": RNG.standard_normal((4,) + SHAPE[1:]).astype(np.float32)})
    assert [layer.name for layer in pipe.state.quant_info["plan"].layers] == ["add_0"]


def test_reference_lut_table_covers_every_code():
    table = reference.lut_table(lambda v: v, 0.1, 3, 0.1, 3, "int8")
    np.testing.assert_array_equal(table, np.arange(-128, 128))
    q = np.array([-128, 0, 127], np.int8)
    np.testing.assert_array_equal(reference.lut_apply(q, table[::-1]), [127, -1, -128])


def test_hardswish_between_convs_stays_integer():
    """Conv -> BatchNormalization -> HardSwish -> Conv (a MobileNetV3 block): the table reads the first
    conv's codes and the second conv reads the table's, so nothing but the output computes in float."""
    from .test_fold_batch_norm import bn_node, bn_params

    inits = {"w1": RNG.standard_normal((4, 4, 3, 3)) * 0.3, "w2": RNG.standard_normal((4, 4, 1, 1)) * 0.5,
             **bn_params("bn", 4)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]), bn_node("c", "b", "bn"),
             helper.make_node("HardSwish", ["b"], ["h"]), helper.make_node("Conv", ["h", "w2"], ["y"])]
    captured = {}
    pipe = qcompile.Pipeline(qconfig=QConfig(calib_method="minmax", safety_net=False, float_outputs=False, bias_correction=False), progress=False)
    pipe.add_pass(lambda mod: captured.setdefault("mod", mod), after="realize")
    pipe.run(onnx_model(nodes, inits, SHAPE), calib={"x": RNG.standard_normal((4,) + SHAPE[1:]).astype(np.float32)})
    assert list(pipe.state.quant_info["realized"]) == ["conv2d_0", "hardswish_0", "conv2d_1"]
    assert float_calls(captured["mod"]) == ["relax.dequantize"]
