"""Integer conv2d on the x86 dot-product intrinsics (qcompile/intrin/pack_conv.py, the TensorizedConv
default schedule, the tuning space).

Every kernel is compared bit for bit with the numpy integer reference where this CPU can run it: the
AVX2 vpmaddwd kernels here (any x86-64 with AVX2); the AVX-512 VNNI ones only on a CPU with
avx512_vnni, elsewhere their assembly must contain vpdpbusd. Whole models must give the same outputs
with the pass on and off.
"""

import re
from collections import Counter

import numpy as np
import pytest

import qcompile
from qcompile import zoo
from qcompile.intrin import pack_conv
from qcompile.intrin.pack import ANNOTATION
from qcompile.intrin.pack_conv import PackConvWeights, pack_conv_weight
from qcompile.quantize import reference
from qcompile.quantize.qconfig import QConfig
from qcompile.cpu_features import host_cpu_flags
from qcompile.schedule import default as ds
from qcompile.schedule import records

FLAGS = host_cpu_flags() or set()
HAS_VNNI = {"avx512f", "avx512_vnni"} <= FLAGS
needs_avx2 = pytest.mark.skipif("avx2" not in FLAGS, reason="this CPU has no AVX2: the vpmaddwd kernels cannot run")


@pytest.fixture(autouse=True)
def no_committed_schedules(monkeypatch, tmp_path):
    """Tuning records would schedule kernels before the default schedule does."""
    monkeypatch.setattr(records, "SCHEDULES_DIR", str(tmp_path / "no-schedules"))


def conv_module(shape, w, a_dtype, stride=1, padding=0, dilation=1, groups=1, epilogue=False):
    """main(x) = conv2d(x, W) int32 (NCHW/OIHW), as realize emits it; with `epilogue`, a
    requantize-like tail (+ per-channel bias, >> 6, clip, int8) that fuses into the conv kernel."""
    import tvm
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, a_dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            acc = bb.emit(relax.op.nn.conv2d(x, relax.const(tvm.runtime.tensor(w)), strides=stride, padding=padding,
                                             dilation=dilation, groups=groups, out_dtype="int32"))
            if epilogue:
                bias = np.arange(w.shape[0], dtype=np.int32).reshape(1, -1, 1, 1) * 37 - 300
                acc = bb.emit(relax.op.add(acc, relax.const(bias)))
                acc = bb.emit(relax.op.right_shift(acc, relax.const(6, "int32")))
                clipped = relax.op.clip(acc, relax.prim_value(-128), relax.prim_value(127))
                acc = bb.emit(relax.op.astype(clipped, "int8"))
            out = bb.emit_output(acc)
        bb.emit_func_output(out)
    return bb.get()


def compile_module(mod, spec):
    """PackConvWeights + lower + default schedule + build, as the compile pipeline does."""
    import tvm

    from qcompile.build import build_passes, lower_passes

    target = spec.tvm()
    report = ds.DefaultScheduleReport()
    with target, tvm.transform.PassContext(opt_level=3):
        mod = PackConvWeights(spec.intrinsics)(mod)
        for p in lower_passes(target):
            mod = p(mod)
        mod = ds.apply_default_schedule(mod, target, report=report)
    ex = tvm.compile(mod, target, relax_pipeline=tvm.transform.Sequential(build_passes(target)))
    return ex, report


def conv_asm(executable) -> str:
    (llvm_mod,) = [m for m in executable.mod.imports if m.kind == "llvm"]
    asm = llvm_mod.inspect_source("asm")
    start = asm.index("qcompile_packed_conv")  # the conv kernel's own code, not the transpose's
    return asm[start:]


def mnemonics(asm: str) -> Counter:
    return Counter(re.findall(r"^\s+([a-z][a-z0-9]*)\s", asm, re.M))


def run(ex, a):
    import tvm
    from tvm import relax

    return relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(a)).numpy()


def operands(seed, x_shape, w_shape, a_dtype, extreme=None):
    rng = np.random.default_rng(seed)
    info = np.iinfo(a_dtype)
    a = rng.integers(info.min, int(info.max) + 1, x_shape).astype(a_dtype)
    w = rng.integers(-128, 128, w_shape).astype(np.int8)
    if extreme is not None:
        a[:], w[:] = extreme
    return a, w


# ----------------------------------------------------------------------------- the pieces

def test_pack_conv_weight_blocks_and_zero_padding():
    w = (np.arange(13 * 5 * 3 * 2) % 251 - 125).astype(np.int8).reshape(13, 5, 3, 2)  # [O, C, KH, KW]
    wp = pack_conv_weight(w, lanes=8, k=2)
    assert wp.shape == (2, 3, 2, 3, 8, 2) and wp.flags.c_contiguous
    for a, h, x, b, i, r in [(0, 0, 0, 0, 0, 0), (1, 2, 1, 2, 4, 0), (0, 1, 0, 1, 7, 1), (1, 0, 1, 0, 3, 1)]:
        assert wp[a, h, x, b, i, r] == w[a * 8 + i, b * 2 + r, h, x]
    assert not wp[1, :, :, :, 5:, :].any() and not wp[:, :, :, 2, :, 1].any()  # O 13 -> 16, C 5 -> 6: zeros
    assert pack_conv_weight(w, 16, 4).sum(dtype=np.int64) == w.sum(dtype=np.int64)
    with pytest.raises(ValueError, match=r"\[O, C, KH, KW\]"):
        pack_conv_weight(np.zeros((2, 3)), 8, 2)


def test_packing_only_where_a_target_intrinsic_fits():
    """No dot intrinsic, a grouped conv (SplitGroupedConv splits it first in the pipeline), int16, a
    dtype pair without intrinsic, a weight that is no constant: untouched. A plain int8 conv: one packed
    kernel whose block names the intrinsic."""
    from tvm import relax

    w8 = np.ones((8, 4, 3, 3), np.int8)
    plain = conv_module((1, 4, 6, 6), w8, "int8")
    assert PackConvWeights(())(plain).same_as(plain)
    assert PackConvWeights(["qcompile_dot_16x4_vnni"])(plain).same_as(plain)    # u8 x s8 only; this is s8 x s8
    packed = PackConvWeights(["qcompile_dot_8x2_i8i8_avx2"])(plain)
    assert "qcompile_packed_conv" in [gv.name_hint for gv in packed.get_global_vars()]
    assert f'"{ANNOTATION}": "qcompile_dot_8x2_i8i8_avx2"' in packed.script(show_meta=False)

    grouped = conv_module((1, 4, 6, 6), np.ones((8, 2, 3, 3), np.int8), "int8", groups=2)
    assert PackConvWeights(["qcompile_dot_8x2_i8i8_avx2"])(grouped).same_as(grouped)
    wide = conv_module((1, 4, 6, 6), w8.astype(np.int16), "int16")
    assert PackConvWeights(["qcompile_dot_8x2_i8i8_avx2"])(wide).same_as(wide)

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4, 6, 6), "int8"))
    wv = relax.Var("w", relax.TensorType((8, 4, 3, 3), "int8"))
    with bb.function("main", [x, wv]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.conv2d(x, wv, out_dtype="int32"))
        bb.emit_func_output(out)
    dynamic_weight = bb.get()
    assert PackConvWeights(["qcompile_dot_8x2_i8i8_avx2"])(dynamic_weight).same_as(dynamic_weight)


def test_packed_conv_rejects_mismatched_operands():
    from tvm import te

    x = te.placeholder((1, 8, 8, 6), "int8")
    with pytest.raises(ValueError, match="6 channels, the packed weight 4"):
        pack_conv.packed_conv_te(x, te.placeholder((1, 3, 3, 2, 8, 2), "int8"), 8, [1, 1], [1, 1], "x")
    with pytest.raises(ValueError, match="does not fit"):
        pack_conv.packed_conv_te(x, te.placeholder((1, 9, 9, 3, 8, 2), "int8"), 8, [1, 1], [1, 1], "x")


# ----------------------------------------------------------------------------- AVX2: run here

AVX2_CASES = [
    # x shape, (O, KH=KW), stride, padding, dilation, activation dtype, extreme (a, w) or None
    ((1, 64, 14, 14), (64, 3), 1, 1, 1, "int8", None),
    ((1, 3, 30, 30), (16, 7), 2, 3, 1, "int8", None),        # the stem: C = 3 is padded to 4, 7x7 stride 2
    ((2, 13, 9, 11), (21, 3), 1, 1, 1, "uint8", None),       # C, O off the 2 x 8 block; batch 2
    ((1, 32, 15, 15), (24, 1), 2, 0, 1, "uint8", None),      # 1x1 stride 2 (ResNet downsample)
    ((1, 16, 7, 7), (40, 1), 1, 0, 1, "int8", None),         # 1x1 on a 7x7 map
    ((1, 7, 12, 12), (9, 3), 1, (2, 1, 2, 1), 2, "int8", None),  # dilation 2, asymmetric padding
    ((1, 6, 5, 5), (8, 5), 1, 0, 1, "int8", None),           # one output pixel
    ((1, 33, 6, 6), (9, 3), 1, 1, 1, "uint8", (255, 127)),   # vpmaddubsw would saturate these pairs
    ((1, 33, 6, 6), (9, 3), 1, 1, 1, "uint8", (255, -128)),
    ((1, 31, 6, 6), (17, 3), 1, 1, 1, "int8", (-128, -128)),
    ((1, 31, 6, 6), (17, 3), 1, 1, 1, "int8", (127, -128)),
]


@needs_avx2
@pytest.mark.parametrize("x_shape,ok,stride,padding,dilation,a_dtype,extreme", AVX2_CASES)
def test_avx2_conv_is_tensorized_and_bit_exact(x_shape, ok, stride, padding, dilation, a_dtype, extreme):
    (o, k), c = ok, x_shape[1]
    a, w = operands(sum(x_shape) + o + k, x_shape, (o, c, k, k), a_dtype, extreme)
    mod = conv_module(x_shape, w, a_dtype, stride, padding, dilation)
    ex, report = compile_module(mod, qcompile.load_target("x86_64"))
    assert report.kernels.get("qcompile_packed_conv") == "TensorizedConv", report.kernels
    ops = mnemonics(conv_asm(ex))
    assert ops["vpmaddwd"] > 0 and ops["vpmulld"] == 0, ops.most_common(12)
    want = reference.qconv2d(a, 0, w, 0, stride=stride, padding=padding, dilation=dilation, acc_dtype="int32")
    np.testing.assert_array_equal(run(ex, a), want)


@needs_avx2
def test_avx2_conv_with_fused_epilogue_is_bit_exact():
    a, w = operands(5, (1, 24, 10, 10), (32, 24, 3, 3), "int8")
    ex, report = compile_module(conv_module(a.shape, w, "int8", 1, 1, epilogue=True), qcompile.load_target("x86_64"))
    (conv,) = [name for name, rule in report.kernels.items() if "conv" in name]
    assert report.kernels[conv] == "TensorizedConv", report.kernels
    acc = reference.qconv2d(a, 0, w, 0, padding=1, acc_dtype="int32").astype(np.int64)
    want = np.clip((acc + np.arange(32).reshape(1, -1, 1, 1) * 37 - 300) >> 6, -128, 127).astype(np.int8)
    np.testing.assert_array_equal(run(ex, a), want)


# ----------------------------------------------------------------------------- VNNI: compile here, run on VNNI

@pytest.mark.parametrize("x_shape,ok,stride,padding,extreme", [
    ((1, 64, 8, 8), (32, 3), 1, 1, None),
    ((1, 3, 20, 20), (20, 7), 2, 3, None),
    ((1, 30, 6, 6), (24, 1), 1, 0, (255, -128)),
])
def test_vnni_conv_emits_vpdpbusd_and_is_exact_where_it_runs(x_shape, ok, stride, padding, extreme):
    (o, k), c = ok, x_shape[1]
    a, w = operands(o + k, x_shape, (o, c, k, k), "uint8", extreme)
    ex, report = compile_module(conv_module(x_shape, w, "uint8", stride, padding), qcompile.load_target("x86_vnni"))
    assert report.kernels.get("qcompile_packed_conv") == "TensorizedConv", report.kernels
    ops = mnemonics(conv_asm(ex))
    assert ops["vpdpbusd"] > 0, ops.most_common(12)
    if not HAS_VNNI:
        pytest.skip("compiled to vpdpbusd; running it needs a CPU with avx512_vnni (this one has none)")
    want = reference.qconv2d(a, 0, w, 0, stride=stride, padding=padding, acc_dtype="int32")
    np.testing.assert_array_equal(run(ex, a), want)


# ----------------------------------------------------------------------------- tuning space

@pytest.mark.parametrize("target,instruction", [("x86_64", "vpmaddwd"), ("x86_vnni", "vpdpbusd")])
def test_tuning_space_tensorizes_the_packed_conv(target, instruction):
    """Every design of the MetaSchedule space tune() builds tensorizes the packed conv with the
    target's intrinsic (qcompile.tune.tuner.with_dot_intrinsics, unchanged); the candidates are
    bit-exact where the CPU can run them."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from qcompile.intrin import dot_intrin_for
    from qcompile.build import lower_passes
    from qcompile.intrin import use_cpu_tensor_intrinsics
    from qcompile.tune.tuner import serial_space, tuning_target, with_dot_intrinsics

    spec = qcompile.load_target(target)
    a_dtype = "uint8" if target == "x86_vnni" else "int8"
    a, w = operands(11, (1, 12, 10, 10), (20, 12, 3, 3), a_dtype)   # C a multiple of k, no padding: one kernel
    tvm_target = tuning_target(spec, 1)
    with tvm_target:
        mod = PackConvWeights(spec.intrinsics)(conv_module(a.shape, w, a_dtype))
        for p in lower_passes(tvm_target):
            mod = p(mod)
    use_cpu_tensor_intrinsics(tvm_target)
    kernel = tvm.IRModule({"main": mod["qcompile_packed_conv"].with_attr("global_symbol", "main")})
    default = ms.TuneContext(mod=kernel, target=tvm_target, space_generator="post-order-apply",
                             search_strategy="replay-trace").space_generator
    space = with_dot_intrinsics(serial_space(default), spec.intrinsics)
    ctx = ms.TuneContext(mod=kernel, target=tvm_target, space_generator=space, search_strategy="replay-trace",
                         rand_state=1)
    designs = ctx.generate_design_space()
    assert designs
    intrin = dot_intrin_for(spec.intrinsics, a_dtype, "int8")
    wp = pack_conv_weight(w, intrin.lanes, intrin.k)
    want = np.ascontiguousarray(reference.qconv2d(a, 0, w, 0, acc_dtype="int32").transpose(0, 2, 3, 1))  # NHWC out
    for sch in designs:
        assert all(p.apply(sch) for p in space.postprocs)
        lib = tvm.compile(sch.mod, tvm_target)
        assert instruction in lib.mod.inspect_source("asm")
        if target == "x86_vnni" and not HAS_VNNI:
            continue
        out = tvm.runtime.tensor(np.zeros(want.shape, np.int32))
        lib["main"](tvm.runtime.tensor(np.ascontiguousarray(a.transpose(0, 2, 3, 1))), tvm.runtime.tensor(wp), out)
        np.testing.assert_array_equal(out.numpy(), want)


# ----------------------------------------------------------------------------- whole models

def _compile_on_and_off(monkeypatch, source, calib, input_shapes=None):
    """Artifacts compiled int8 for x86_64 from one calibrated, realized module: the pipeline's lower
    stage as it is, and with PackConvWeights given no intrinsics (a no-op; the dense packing stays on
    in both)."""
    import copy

    from qcompile.pipeline import STAGES, CompileState, Pipeline

    pipe = Pipeline(target="x86_64", qconfig=QConfig(), progress=False)
    realized = CompileState(source=source, target=pipe.target, input_shapes=input_shapes, qconfig=QConfig(),
                            calib=calib, progress=False, records=pipe.records)
    realized.quant_info["want_report"] = False
    pipe.run_stages(realized, STAGES[:STAGES.index("lower")])
    arts, notes = {}, {}
    real = pack_conv.PackConvWeights
    for name in ("on", "off"):
        if name == "off":
            monkeypatch.setattr(pack_conv, "PackConvWeights", lambda _intrinsics: real(()))
        state = copy.copy(realized)
        state.notes, state.timings = list(realized.notes), dict(realized.timings)
        pipe.run_stages(state, STAGES[STAGES.index("lower"):])
        arts[name], notes[name] = state.artifact, " ".join(state.notes)
    monkeypatch.setattr(pack_conv, "PackConvWeights", real)
    assert "TensorizedConv" in notes["on"] and "TensorizedConv" not in notes["off"], notes
    return arts


@needs_avx2
def test_digits_int8_same_outputs_with_and_without_the_packed_conv(monkeypatch):
    inputs, _ = zoo.digits_test()
    inputs = {k: v[:32] for k, v in inputs.items()}
    arts = _compile_on_and_off(monkeypatch, zoo.DIGITS_MODEL, zoo.digits_calib())
    on, off = arts["on"].run(inputs), arts["off"].run(inputs)
    assert np.abs(off["logits"]).max() > 0
    for key in off:
        np.testing.assert_array_equal(on[key], off[key])


@needs_avx2
@pytest.mark.slow
def test_squeezenet_int8_same_outputs_with_and_without_the_packed_conv(monkeypatch):
    """SqueezeNet 1.0 at 96 x 96: 1x1, 3x3 and the 7x7 stride-2 stem on C = 3, concats of packed convs,
    pooling. Slow: one calibration and two int8 builds take 50-70 s on the 2 shared cores, which
    would put this file over its 90 s budget; the digits test above covers the pipeline in the fast set."""
    model = zoo.light_model("squeezenet", seed=0)
    name, dims = model.graph.input[0].name, model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = dims[3].dim_value = 96   # it ends in a GlobalAveragePool: any size works
    del model.graph.value_info[:]
    rng = np.random.default_rng(0)
    calib = {name: rng.random((2, 3, 96, 96)).astype(np.float32)}
    arts = _compile_on_and_off(monkeypatch, model, calib)
    x = {name: rng.random((1, 3, 96, 96)).astype(np.float32)}
    on, off = arts["on"].run(x), arts["off"].run(x)
    for key in off:
        assert np.std(off[key]) > 0
        np.testing.assert_array_equal(on[key], off[key])
