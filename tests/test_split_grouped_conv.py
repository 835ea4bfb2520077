"""SplitGroupedConv: grouped conv2d -> one conv2d per group + concat, same results, tiled kernels."""

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

import qcompile
from qcompile.target import load_target
from qcompile.transform import SplitGroupedConv
from qcompile.schedule.default import DefaultScheduleReport, apply_default_schedule

RNG = np.random.default_rng(0)


def conv_module(x_shape, w, groups, dtype, out_dtype, padding=1, strides=1, const_weight=True):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(x_shape, dtype))
    params = [x]
    if const_weight:
        wv = relax.const(w)
    else:
        wv = relax.Var("w", relax.TensorType(w.shape, dtype))
        params.append(wv)
    with bb.function("main", params):
        y = bb.emit(relax.op.nn.conv2d(x, wv, strides=strides, padding=padding, groups=groups, out_dtype=out_dtype))
        bb.emit_func_output(y)
    return bb.get()


def run(mod, *args):
    ex = tvm.compile(mod, load_target("x86_64").tvm())
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in args]).numpy()


def data(shape, dtype):
    if dtype == "float32":
        return RNG.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return RNG.integers(info.min, info.max + 1, shape).astype(dtype)


@pytest.mark.parametrize("dtype,out_dtype,groups,cin,cout,strides,const_weight", [
    ("float32", "float32", 2, 16, 24, 1, True),
    ("float32", "float32", 4, 32, 32, 2, False),       # weights a graph input: sliced in the graph
    ("int8", "int32", 2, 16, 16, 1, True),             # realized integer conv: bit-exact
    ("uint8", "int32", 3, 24, 48, 2, True),
])
def test_split_gives_identical_results(dtype, out_dtype, groups, cin, cout, strides, const_weight):
    x = data((1, cin, 10, 9), dtype)
    w = data((cout, cin // groups, 3, 3), "int8" if dtype != "float32" else dtype)
    if dtype == "uint8":
        x_mod = conv_module(x.shape, w, groups, dtype, out_dtype, strides=strides)
    else:
        x_mod = conv_module(x.shape, w, groups, dtype, out_dtype, strides=strides, const_weight=const_weight)
    split = SplitGroupedConv()
    new = split(x_mod)
    assert split.last_count == 1
    convs = [c for c in _calls(new) if c == "relax.nn.conv2d"]
    assert len(convs) == groups and "relax.concat" in _calls(new)
    args = (x,) if const_weight or dtype == "uint8" else (x, w)
    np.testing.assert_array_equal(run(new, *args), run(x_mod, *args))


def test_depthwise_and_small_groups_are_left_alone():
    for groups, cin, cout in ((16, 16, 16), (4, 16, 16)):   # 1 and 4 channels per group: below 8
        mod = conv_module((1, cin, 8, 8), data((cout, cin // groups, 3, 3), "float32"), groups, "float32", "float32")
        split = SplitGroupedConv()
        tvm.ir.assert_structural_equal(split(mod), mod)
        assert split.last_count == 0


def test_split_kernels_get_a_tiled_default_schedule():
    """The reason for the pass: the grouped kernel indexes the input by the output channel, so no
    default-schedule rule tiles it; each per-group conv gets the register-tiled schedule."""
    w = data((64, 16, 3, 3), "float32")
    mod = conv_module((1, 32, 14, 14), w, 2, "float32", "float32")
    target = load_target("x86_64").tvm()

    def rules(m):
        from qcompile.build import lower_passes

        with target, tvm.transform.PassContext(opt_level=3):
            for p in lower_passes(target):
                m = p(m)
        report = DefaultScheduleReport()
        apply_default_schedule(m, target, report=report)
        return {name: rule for name, rule in report.kernels.items() if "conv" in name}

    before, after = rules(mod), rules(SplitGroupedConv()(mod))
    assert set(before.values()) != {"TiledReduction"}, before
    assert set(after.values()) == {"TiledReduction"}, after


def test_pipeline_splits_and_matches_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    w = numpy_helper.from_array(RNG.standard_normal((32, 8, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], group=2, pads=[1, 1, 1, 1], name="gconv"),
         helper.make_node("Relu", ["c"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 12, 12])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = str(tmp_path / "g.onnx")
    onnx.save(model, path)
    art = qcompile.compile(path, target="x86_64", out_dir=str(tmp_path / "out"))
    assert any("1 grouped conv2d split" in n for n in art.metadata["notes"]), art.metadata["notes"]
    x = RNG.standard_normal((1, 16, 12, 12)).astype(np.float32)
    ref = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(art.run({"x": x})["y"], ref, rtol=1e-5, atol=1e-5)


def _calls(mod):
    names = []
    relax.analysis.post_order_visit(mod["main"], lambda e: names.append(e.op.name)
                                    if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) else None)
    return names
