"""Default schedules for kernels without a tuning record (qcompile/tune/default_schedule.py).

(a) a scheduled kernel is no longer TVM's naive loop nest; (b) it computes the same thing: bit for
bit for integer kernels, within float tolerance for fp32, on single kernels with awkward shapes and
on whole models; (c) tuning records still win where they exist; and the switch turns it off.
"""

import os

import numpy as np
import pytest

import qcompile
from qcompile import zoo
from qcompile.pipeline import STAGES, CompileState, Pipeline
from qcompile.schedule import default as ds
from qcompile.schedule import records
from conftest import make_conv_model, run_cli

X86 = "x86_64"


def lowered(source, target=X86, qconfig=None, calib=None, until="lower", **kw):
    """The pipeline's state after `until` (default: the lowered module, before any schedule)."""
    pipe = Pipeline(target=target, qconfig=qconfig, progress=False, **kw)
    state = CompileState(source=source, target=pipe.target, qconfig=qconfig, calib=calib, progress=False,
                         records=pipe.records, default_schedule=pipe.default_schedule)
    state.quant_info["want_report"] = False
    pipe.run_stages(state, STAGES[:STAGES.index(until) + 1])
    return state


def prim_funcs(mod) -> dict:
    return {gv.name_hint: f for gv, f in mod.functions_items() if "PrimFunc" in type(f).__name__}


@pytest.fixture(autouse=True)
def no_committed_schedules(request, monkeypatch, tmp_path):
    """Records in schedules/<target>/ would schedule the digits kernels first; most tests want none."""
    if "committed" not in request.node.name:
        monkeypatch.setattr(records, "SCHEDULES_DIR", str(tmp_path / "no-schedules"))


# ----------------------------------------------------------------------------- (a) not the naive nest

def test_every_digits_kernel_gets_a_schedule_with_vector_lanes():
    state = lowered(zoo.DIGITS_MODEL)
    target = state.target.tvm()
    report = ds.DefaultScheduleReport()
    mod = ds.apply_default_schedule(state.mod, target, report=report)
    naive = prim_funcs(state.mod)
    assert report.scheduled == len(report.kernels) == len(naive) == 8, report.kernels
    for name, func in prim_funcs(mod).items():
        assert func.attrs["tirx.is_scheduled"], name
        assert "tirx.is_scheduled" not in (naive[name].attrs or {})  # the input module is left as it was
    conv = prim_funcs(mod)["fused_conv2d1_add1_relu1"].script()
    assert report.kernels["fused_conv2d1_add1_relu1"] == "TiledReduction"
    assert "T.vectorized(" in conv and "T.unroll(" in conv and 'scope="local"' in conv
    assert "T.vectorized(" not in naive["fused_conv2d1_add1_relu1"].script()
    assert "default schedule for 8 of 8" in report.summary()
    # the same as a module pass, under the target
    with target:
        passed = ds.DefaultSchedule()(state.mod)
    assert all(f.attrs["tirx.is_scheduled"] for f in prim_funcs(passed).values())


def test_large_kernels_run_in_parallel_small_ones_do_not(monkeypatch):
    state = lowered(make_conv_model(batch=1))
    target = state.target.tvm()
    small = prim_funcs(ds.apply_default_schedule(state.mod, target))
    assert not any("T.parallel(" in f.script() for f in small.values())  # a 3x8x8 conv: no thread launch
    monkeypatch.setattr(ds, "PARALLEL_MIN_WORK", 1)
    big = prim_funcs(ds.apply_default_schedule(state.mod, target))
    assert "T.parallel(" in big["fused_conv2d_add_relu"].script()


def test_non_cpu_target_is_left_alone():
    import tvm

    state = lowered(make_conv_model(batch=1))
    assert ds.apply_default_schedule(state.mod, tvm.target.Target({"kind": "c"})) is state.mod
    assert ds.vector_bits(tvm.target.Target({"kind": "llvm", "mcpu": "haswell"})) == 256
    assert ds.vector_bits(tvm.target.Target({"kind": "llvm", "mcpu": "sapphirerapids"})) == 512
    assert ds.vector_bits(tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu",
                                             "mattr": ["+neon"]})) == 128


# ----------------------------------------------------------------------------- (b) same results

def _run_kernel(func, args, target):
    import tvm

    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target)
    tensors = [tvm.runtime.tensor(a) for a in args]
    lib["main"](*tensors)
    return tensors[-1].numpy()


def _random_args(func, rng):
    args = []
    for buf in func.params:
        shape, dtype = [int(d) for d in buf.shape], str(buf.dtype)
        if dtype.startswith("float"):
            args.append(rng.standard_normal(shape).astype(dtype))
        elif dtype == "int64":   # requantize multipliers / shifts
            args.append(rng.integers(1, 20, shape).astype(dtype))
        else:
            info = np.iinfo(dtype)
            args.append(rng.integers(info.min, int(info.max) + 1, shape).astype(dtype))
    return args


def _int8_layer_module(kind, shape, dtype_a="int8"):
    """One integer layer as realize emits it: int8/uint8 x int8 -> int32, + bias, requantize, clip, cast."""
    import tvm
    from tvm import relax

    bb = relax.BlockBuilder()
    if kind == "conv":
        c, h, w, f, k, stride, groups = shape
        x = relax.Var("x", relax.TensorType((1, c, h, w), dtype_a))
        wt = relax.Var("w", relax.TensorType((f, c // groups, k, k), "int8"))
        params = [x, wt]
        out_shape = (1, f, 1, 1)
    else:
        m, k_, n = shape
        x = relax.Var("x", relax.TensorType((1, m, k_), dtype_a))
        wt = relax.Var("w", relax.TensorType((k_, n), "int8"))
        params = [x, wt]
        out_shape = (n,)
    bias = relax.Var("b", relax.TensorType(out_shape, "int32"))
    mult = relax.Var("m", relax.TensorType(out_shape, "int64"))
    shift = relax.Var("s", relax.TensorType(out_shape, "int64"))
    with bb.function("main", params + [bias, mult, shift]):
        with bb.dataflow():
            if kind == "conv":
                acc = bb.emit(relax.op.nn.conv2d(x, wt, strides=stride, padding=k // 2, groups=groups,
                                                 out_dtype="int32"))
            else:
                acc = bb.emit(relax.op.matmul(x, wt, out_dtype="int32"))
            acc = bb.emit(relax.op.add(acc, bias))
            wide = bb.emit(relax.op.astype(acc, "int64"))
            scaled = bb.emit(relax.op.right_shift(relax.op.add(relax.op.multiply(wide, mult), relax.const(1 << 10, "int64")),
                                                  shift))
            clipped = bb.emit(relax.op.clip(relax.op.add(scaled, relax.const(-3, "int64")),
                                            relax.prim_value(-128), relax.prim_value(127)))
            out = bb.emit_output(relax.op.astype(clipped, "int8"))
        bb.emit_func_output(out)
    return bb.get()


INT8_LAYERS = [
    ("conv", (16, 13, 13, 64, 3, 1, 1)),    # width 13: predicated u tiles, channels packed
    ("conv", (32, 16, 16, 24, 3, 1, 1)),    # width 16: vector along the width
    ("conv", (8, 15, 15, 16, 3, 2, 1)),     # stride 2: weights packed, inputs broadcast
    ("conv", (24, 7, 7, 40, 1, 1, 1)),      # 1x1, width 7, 40 channels
    ("conv", (16, 12, 12, 16, 3, 1, 16)),   # depthwise
    ("matmul", (64, 96, 48)),               # [K, N] weight: vector along N
    ("matmul", (5, 32, 10)),                # nothing divides: untiled
    ("matmul", (1, 200, 512)),              # one row (matrix-vector): the whole tile along N
]


@pytest.mark.parametrize("dtype_a", ["int8", "uint8"])
@pytest.mark.parametrize("kind,shape", INT8_LAYERS, ids=[f"{k}{s}" for k, s in INT8_LAYERS])
def test_integer_kernels_are_bit_exact(kind, shape, dtype_a):
    import tvm

    from qcompile.build import lower_passes

    target = qcompile.load_target(X86).tvm()
    mod = _int8_layer_module(kind, shape, dtype_a)
    with target, tvm.transform.PassContext(opt_level=3):
        for p in lower_passes(target):
            mod = p(mod)
    rng = np.random.default_rng(0)
    funcs = prim_funcs(mod)
    assert funcs
    for name, func in funcs.items():
        new, rule = ds.schedule_func(func, target)
        assert new is not None, name
        args = _random_args(func, rng)
        np.testing.assert_array_equal(_run_kernel(new, args, target), _run_kernel(func, args, target),
                                      err_msg=f"{name} ({rule})")


def test_matrix_vector_product_spends_the_registers_on_the_output_row():
    """A [1, K] x [K, N] matmul (a classifier's fully connected layer at batch 1) has no second output
    axis to tile: two vector registers of accumulators left one FMA chain waiting on the last and read
    each weight row 64 bytes at a time (AlexNet's fc6 took 65 ms; 44 ms with the row tile)."""
    import re

    import tvm
    from tvm import relax

    from qcompile.build import lower_passes

    target = qcompile.load_target(X86).tvm()
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 300), "float32"))
    w = relax.Var("w", relax.TensorType((300, 1024), "float32"))
    with bb.function("main", [x, w]):
        bb.emit_func_output(bb.emit(relax.op.matmul(x, w)))
    mod = bb.get()
    with target, tvm.transform.PassContext(opt_level=3):
        for p in lower_passes(target):
            mod = p(mod)
    (name, func), = prim_funcs(mod).items()
    new, rule = ds.schedule_func(func, target)
    assert rule == "TiledReduction"
    widths = [int(v) for v in re.findall(r"T\.vectorized\(T\.int64\((\d+)\)\)", new.script())]
    lanes = ds.vector_bits(target) // 32
    assert max(widths) >= 4 * lanes, new.script()
    args = _random_args(func, np.random.default_rng(0))
    np.testing.assert_array_equal(_run_kernel(new, args, target), _run_kernel(func, args, target))


def test_fp32_digits_outputs_unchanged_and_match_ort():
    ort = pytest.importorskip("onnxruntime")
    inputs, labels = zoo.digits_test()
    naive = qcompile.compile(zoo.DIGITS_MODEL, target=X86, default_schedule=False)
    default = qcompile.compile(zoo.DIGITS_MODEL, target=X86)
    assert any(n.startswith("default schedule for 8 of 8") for n in default.metadata["notes"])
    assert not any(n.startswith("default schedule") for n in naive.metadata["notes"])
    a, b = naive.run(inputs)["logits"], default.run(inputs)["logits"]
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    ref = ort.InferenceSession(zoo.DIGITS_MODEL, providers=["CPUExecutionProvider"]).run(None, inputs)[0]
    assert np.abs(b - ref).max() <= 1e-4
    assert (b.argmax(1) == labels).mean() >= 0.95


def test_int8_digits_outputs_are_bit_exact():
    from qcompile.quantize.qconfig import QConfig

    inputs, _ = zoo.digits_test()
    inputs = {k: v[:64] for k, v in inputs.items()}
    calib = zoo.digits_calib()
    naive = Pipeline(target=X86, qconfig=QConfig(), progress=False, default_schedule=False).run(
        zoo.DIGITS_MODEL, calib=calib)
    default = Pipeline(target=X86, qconfig=QConfig(), progress=False).run(zoo.DIGITS_MODEL, calib=calib)
    assert naive.metadata["quantization"] == default.metadata["quantization"]  # calibration is deterministic
    # 11: the 3 plain convs run packed for the AVX2 dot intrinsic (intrin/pack_conv.py), and the integer region
    # stays NHWC from the first conv on (transform/channels_last.py): no transpose kernel between its layers
    assert any(n.startswith("default schedule for 11 of 11") for n in default.metadata["notes"])
    np.testing.assert_array_equal(default.run(inputs)["logits"], naive.run(inputs)["logits"])


# ----------------------------------------------------------------------------- (c) records win

def test_records_win_over_the_default_schedule(tmp_path):
    committed = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "schedules", X86)
    best = records.load_records(committed)
    if not best:
        pytest.skip("no committed x86_64 records")
    some = str(tmp_path / "some")
    records.save_records(some, best[:3])

    with_default = lowered(zoo.DIGITS_MODEL, until="apply_records", records=[some])
    only_records = lowered(zoo.DIGITS_MODEL, until="apply_records", records=[some], default_schedule=False)
    tuned = {n: f for n, f in prim_funcs(only_records.mod).items() if f.attrs and f.attrs.get("tirx.is_scheduled")}
    assert len(tuned) == 3
    from tvm_ffi import structural_equal

    final = prim_funcs(with_default.mod)
    for name, func in tuned.items():
        assert structural_equal(final[name], func), f"{name}: the record's schedule was replaced"
    assert all(f.attrs["tirx.is_scheduled"] for f in final.values())
    assert any("(3 of 8 kernels)" in n for n in with_default.notes)
    assert any(n.startswith("default schedule for 5 of 5") for n in with_default.notes), with_default.notes


def test_committed_records_leave_nothing_to_default(tmp_path):
    committed = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "schedules", X86)
    if not records.is_database(committed):
        pytest.skip("no committed x86_64 records")
    art = qcompile.compile(zoo.DIGITS_MODEL, target=X86, records=[committed])
    notes = art.metadata["notes"]
    assert any("(8 of 8 kernels)" in n for n in notes) and not any(n.startswith("default schedule") for n in notes)


# ----------------------------------------------------------------------------- turning it off

def test_target_yaml_and_cli_switch_it_off(tmp_path):
    import yaml

    spec = yaml.safe_load(open(qcompile.load_target(X86).source))
    spec["tuning"]["default_schedule"] = False
    spec["name"] = "x86_64_naive"
    path = tmp_path / "naive.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert qcompile.load_target(str(path)).tuning.default_schedule is False
    state = lowered(make_conv_model(batch=1), target=str(path), until="apply_records")
    assert not any(f.attrs and f.attrs.get("tirx.is_scheduled") for f in prim_funcs(state.mod).values())
    # the Python switch overrides the file
    state = lowered(make_conv_model(batch=1), target=str(path), until="apply_records", default_schedule=True)
    assert all(f.attrs["tirx.is_scheduled"] for f in prim_funcs(state.mod).values())

    spec["tuning"]["default_schedule"] = "yes"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(qcompile.QCompileError, match="tuning.default_schedule"):
        qcompile.load_target(str(path))

    import onnx

    model = tmp_path / "conv.onnx"
    onnx.save(make_conv_model(batch=1), str(model))
    proc = run_cli("compile", model, "--target", X86, "-o", tmp_path / "out", "--no-default-schedule")
    assert proc.returncode == 0, proc.stderr
    assert "default schedule" not in proc.stdout
    proc = run_cli("compile", model, "--target", X86, "-o", tmp_path / "out2")
    assert proc.returncode == 0, proc.stderr
    assert "default schedule for 4 of 4 untuned kernels" in proc.stdout
