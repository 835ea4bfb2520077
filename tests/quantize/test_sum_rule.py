"""ONNX Sum with more than two inputs (imported as broadcast_to+stack+sum) becomes binary adds before
annotate (qcompile/transform/sum_to_adds.py), and each add takes the integer add rule: the realized
codes match the numpy reference (reference.add_requantized, chained)."""

from collections import Counter

import numpy as np
import pytest
from onnx import helper

import qcompile
from qcompile.quantize import reference
from qcompile.quantize.qconfig import QConfig

from .test_fold_batch_norm import onnx_model, op_counts, ort_run, preprocessed
from .test_realize import out_codes, qparams_of

RNG = np.random.default_rng(11)


def sum_model(relu: bool):
    """y = Sum(relu(x), 2x, -x) (+ Relu): three inputs the float model computes exactly; a 1x1 conv reads y
    (an add whose output only leaves for float is not worth integers), and y is an output too."""
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Mul", ["x", "two"], ["b"]),
             helper.make_node("Neg", ["x"], ["c"]), helper.make_node("Sum", ["a", "b", "c"], ["s"]),
             helper.make_node("Relu" if relu else "Identity", ["s"], ["y"]),
             helper.make_node("Conv", ["y", "w"], ["z"])]
    return onnx_model(nodes, {"two": np.float32(2.0), "w": RNG.standard_normal((2, 3, 1, 1))}, (1, 3, 4, 4),
                      outputs=("y", "z"))


def test_sum_becomes_binary_adds():
    ops = op_counts(preprocessed(sum_model(relu=False)))
    assert ops["relax.add"] == 2 and not ops["relax.stack"] and not ops["relax.sum"] and not ops["relax.broadcast_to"]
    # broadcasting inputs: the adds broadcast like the copies did
    model = onnx_model([helper.make_node("Sum", ["x", "k", "x"], ["y"])], {"k": RNG.standard_normal((3, 1, 1))},
                       (1, 3, 4, 4))
    assert op_counts(preprocessed(model)) == Counter({"relax.add": 2})
    x = RNG.standard_normal((1, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(qcompile.compile(model).run({"x": x})["y"], ort_run(model, x), rtol=1e-6)


@pytest.mark.parametrize("act, relu", [("uint8", False), ("int8", True), ("int16", False)])
def test_sum_of_three_is_integer_bit_exact(act, relu):
    model = sum_model(relu)
    qc = QConfig(calib_method="minmax", safety_net=False, float_outputs=False, bias_correction=False, **({"precision": "int16"} if act == "int16" else
                                                              {"activation_dtype": act}))
    pipe = qcompile.Pipeline(qconfig=qc, progress=False)
    art = pipe.run(model, calib={"x": RNG.standard_normal((8, 3, 4, 4)).astype(np.float32)})
    state = pipe.state
    plan = state.quant_info["plan"]
    first, second = (layer for layer in plan.layers if layer.op == "relax.add")
    assert {first.name, second.name} <= set(state.quant_info["realized"])
    x = RNG.standard_normal((1, 3, 4, 4)).astype(np.float32)
    # the adds quantize relu(x), 2x and -x, which stay float (no rule takes them from a float input)
    (sa, za), (sb, zb), (sc, zc) = (qparams_of(state, v) for v in first.inputs + [second.inputs[1]])
    a = reference.quantize(np.maximum(x, 0), sa, za, act)
    b = reference.quantize(2 * x, sb, zb, act)
    c = reference.quantize(-x, sc, zc, act)
    s1, z1 = qparams_of(state, first.out)
    ab = reference.add_requantized(a, sa, za, b, sb, zb, s1, z1, act)
    so, zo = qparams_of(state, second.out)
    expected = reference.add_requantized(ab, s1, z1, c, sc, zc, so, zo, act)
    if relu:
        expected = np.maximum(expected, zo)
    np.testing.assert_array_equal(out_codes(art.run({"x": x})["y"], so, zo), expected)
