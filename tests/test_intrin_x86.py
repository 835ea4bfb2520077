"""Tensorized integer dense kernels on x86 (qcompile/intrin, the packing pass, the TensorizedDense
default schedule and the tuning space).

Every kernel is run and compared bit for bit with the numpy integer reference where this CPU can run
it: the AVX2 vpmaddwd kernels always (any x86-64 with AVX2), the AVX-512 VNNI ones only on a CPU with
avx512_vnni; elsewhere they are compiled and their assembly must contain vpdpbusd.
"""

import dataclasses
import re
from collections import Counter

import numpy as np
import pytest

import qcompile
from qcompile import intrin, zoo
from qcompile.intrin.pack import ANNOTATION, PackDenseWeights, pack_weight
from qcompile.quantize import reference
from qcompile.quantize.qconfig import QConfig
from qcompile.cpu_features import host_cpu_flags
from qcompile.schedule import default as ds
from qcompile.schedule import records

HAS_VNNI = {"avx512f", "avx512_vnni"} <= (host_cpu_flags() or set())
HAS_AVX2 = "avx2" in (host_cpu_flags() or set())
needs_avx2 = pytest.mark.skipif(not HAS_AVX2, reason="this CPU has no AVX2: the vpmaddwd kernels cannot run here")


@pytest.fixture(autouse=True)
def no_committed_schedules(monkeypatch, tmp_path):
    """Tuning records would schedule kernels before the default schedule does."""
    monkeypatch.setattr(records, "SCHEDULES_DIR", str(tmp_path / "no-schedules"))


def dense_module(m, k, n, a_dtype, w, epilogue=False):
    """main(x[1, m, k]) = matmul(x, W) int32, as realize emits a dense layer; with `epilogue`, the
    requantize-like tail (+ bias, >> 4, clip, int8) that fuses into the same kernel."""
    import tvm
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, m, k), a_dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            acc = bb.emit(relax.op.matmul(x, relax.const(tvm.runtime.tensor(w)), out_dtype="int32"))
            if epilogue:
                acc = bb.emit(relax.op.add(acc, relax.const(np.arange(-n, n, 2, dtype=np.int32))))
                acc = bb.emit(relax.op.right_shift(acc, relax.const(4, "int32")))
                acc = bb.emit(relax.op.astype(relax.op.clip(acc, relax.prim_value(-128), relax.prim_value(127)), "int8"))
            out = bb.emit_output(acc)
        bb.emit_func_output(out)
    return bb.get()


def epilogue_reference(acc, n):
    y = (acc.astype(np.int64) + np.arange(-n, n, 2)) >> 4
    return np.clip(y, -128, 127).astype(np.int8)


def compile_module(mod, spec):
    """PackDenseWeights + lower + default schedule + build, as the compile pipeline does."""
    import tvm

    from qcompile.build import build_passes, lower_passes

    target = spec.tvm()
    report = ds.DefaultScheduleReport()
    with target, tvm.transform.PassContext(opt_level=3):
        mod = PackDenseWeights(spec.intrinsics)(mod)
        for p in lower_passes(target):
            mod = p(mod)
        mod = ds.apply_default_schedule(mod, target, report=report)
    ex = tvm.compile(mod, target, relax_pipeline=tvm.transform.Sequential(build_passes(target)))
    return ex, report


def asm_of(executable) -> str:
    (llvm_mod,) = [m for m in executable.mod.imports if m.kind == "llvm"]
    return llvm_mod.inspect_source("asm")


def mnemonics(asm: str) -> Counter:
    return Counter(re.findall(r"^\s+([a-z][a-z0-9]*)\s", asm, re.M))


def operands(rng, m, k, n, a_dtype, extreme):
    info = np.iinfo(a_dtype)
    a = rng.integers(info.min, int(info.max) + 1, (1, m, k)).astype(a_dtype)
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    if extreme is not None:
        a[:], w[:] = extreme
    return a, w


def assert_one_tensorized_dense(report):
    """One TensorizedDense kernel; the rest (the K padding of the activations, when K is not a
    multiple of the intrinsic's k) are elementwise."""
    rules = sorted(report.kernels.values())
    assert rules.count("TensorizedDense") == 1 and set(rules) <= {"TensorizedDense", "Injective"}, report.kernels


def run(ex, a):
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(a)).numpy()


# ----------------------------------------------------------------------------- the pieces

def test_target_intrinsics_are_registered_dot_intrinsics():
    from tvm.s_tir import TensorIntrin

    for name in ("x86_64", "x86_vnni"):
        spec = qcompile.load_target(name)
        dots = intrin.dot_intrins(spec.intrinsics)
        assert dots and [d.name for d in dots] == list(spec.intrinsics), name
        for d in dots:
            intrin.ensure_registered(d)
            assert TensorIntrin.get(d.name, allow_missing=True) is not None
    # x86_64 keeps int8 activations: the AVX2 intrinsic takes both, so the dtype is the target's choice
    assert intrin.dot_intrin_for(qcompile.load_target("x86_64").intrinsics, "int8", "int8").lanes == 8
    assert intrin.dot_intrin_for(qcompile.load_target("x86_vnni").intrinsics, "int8", "int8") is None
    assert intrin.dot_intrin_for(["qcompile_dot_16x4_vnni"], "uint8", "int8").k == 4


def test_unknown_intrinsic_names_are_refused(tmp_path):
    """A typo in intrinsics: would silently leave every kernel untensorized."""
    from qcompile.errors import TargetError

    text = open(qcompile.load_target("x86_64").source).read()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("qcompile_dot_8x2_u8i8_avx2", "qcompile_dot_8x2_u8i8_avx"))
    with pytest.raises(TargetError, match=r"bad.yaml: unknown tensor intrinsic.*'qcompile_dot_8x2_u8i8_avx'.*known"):
        qcompile.load_target(str(bad))
    tvm_vnni = tmp_path / "tvm_vnni.yaml"   # TVM's dot_16x4_vnni, which does not build
    tvm_vnni.write_text(text.replace("[qcompile_dot_8x2_i8i8_avx2, qcompile_dot_8x2_u8i8_avx2]", "[dot_16x4_vnni]"))
    with pytest.raises(TargetError, match="'dot_16x4_vnni'"):
        qcompile.load_target(str(tvm_vnni))


def test_pack_weight_blocks_and_zero_padding():
    w = np.arange(13 * 20, dtype=np.int64).reshape(13, 20).astype(np.int16)  # [K, N]
    wp = pack_weight(w, lanes=8, k=2)
    assert wp.shape == (3, 7, 8, 2) and wp.flags.c_contiguous
    for a, b, i, r in [(0, 0, 0, 0), (1, 3, 5, 1), (2, 5, 3, 0), (1, 6, 2, 0)]:
        assert wp[a, b, i, r] == w[b * 2 + r, a * 8 + i]
    assert not wp[2, :, 4:, :].any() and not wp[:, 6, :, 1].any()  # N 20 -> 24, K 13 -> 14: zeros
    assert pack_weight(w, 4, 1).sum() == w.sum()
    with pytest.raises(ValueError, match=r"\[K, N\]"):
        pack_weight(np.zeros((2, 3, 4)), 8, 2)


def test_packing_only_where_a_target_intrinsic_fits():
    """No intrinsics, int16 weights, a dtype pair without intrinsic, activation x activation: untouched."""
    from tvm import relax

    w8 = np.ones((16, 8), np.int8)
    plain = dense_module(2, 16, 8, "int8", w8)
    assert PackDenseWeights(())(plain).same_as(plain)
    assert PackDenseWeights(["dot_16x4_vnni"])(plain).same_as(plain)            # not a dot intrinsic we describe
    assert PackDenseWeights(["qcompile_dot_16x4_vnni"])(plain).same_as(plain)   # u8 x s8 only; this is s8 x s8
    packed = PackDenseWeights(["qcompile_dot_8x2_i8i8_avx2"])(plain)
    assert "qcompile_packed_dense" in [gv.name_hint for gv in packed.get_global_vars()]
    assert f'"{ANNOTATION}": "qcompile_dot_8x2_i8i8_avx2"' in packed.script(show_meta=False)

    bb = relax.BlockBuilder()
    a = relax.Var("a", relax.TensorType((4, 16), "int8"))
    b = relax.Var("b", relax.TensorType((16, 8), "int8"))
    with bb.function("main", [a, b]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.matmul(a, b, out_dtype="int32"))
        bb.emit_func_output(out)
    attention = bb.get()
    assert PackDenseWeights(["qcompile_dot_8x2_i8i8_avx2"])(attention).same_as(attention)
    wide = dense_module(2, 16, 8, "int16", w8.astype(np.int16))
    assert PackDenseWeights(["qcompile_dot_8x2_i8i8_avx2"])(wide).same_as(wide)


# ----------------------------------------------------------------------------- AVX2: run here

AVX2_CASES = [
    # m, k, n, activation dtype, extreme (a, w) values or None (random full range)
    (1, 64, 16, "int8", None),
    (6, 13, 20, "int8", None),            # K and N not multiples of the 2 x 8 block
    (5, 7, 3, "uint8", None),             # smaller than one block
    (64, 96, 40, "uint8", None),
    (4, 33, 9, "uint8", (255, 127)),      # vpmaddubsw would saturate these pairs
    (4, 33, 9, "uint8", (255, -128)),
    (3, 31, 17, "int8", (-128, -128)),
    (3, 31, 17, "int8", (127, -128)),
    (3, 31, 17, "int8", (-128, 127)),
]


@needs_avx2
@pytest.mark.parametrize("m,k,n,a_dtype,extreme", AVX2_CASES)
def test_avx2_dense_is_tensorized_and_bit_exact(m, k, n, a_dtype, extreme):
    rng = np.random.default_rng(m * 1000 + k * 10 + n)
    a, w = operands(rng, m, k, n, a_dtype, extreme)
    ex, report = compile_module(dense_module(m, k, n, a_dtype, w), qcompile.load_target("x86_64"))
    assert_one_tensorized_dense(report)
    ops = mnemonics(asm_of(ex))
    assert ops["vpmaddwd"] > 0 and ops["vpmulld"] == 0, ops.most_common(12)
    want = reference.qmatmul(a, 0, w, 0, acc_dtype="int32")
    np.testing.assert_array_equal(run(ex, a), want)


@needs_avx2
def test_avx2_dense_with_fused_epilogue_is_bit_exact():
    m, k, n = 12, 50, 24
    a, w = operands(np.random.default_rng(3), m, k, n, "int8", None)
    ex, report = compile_module(dense_module(m, k, n, "int8", w, epilogue=True), qcompile.load_target("x86_64"))
    assert_one_tensorized_dense(report)
    acc = reference.qmatmul(a, 0, w, 0, acc_dtype="int32")
    np.testing.assert_array_equal(run(ex, a), epilogue_reference(acc, n))


# ----------------------------------------------------------------------------- VNNI: compile here, run on VNNI

@pytest.mark.parametrize("m,k,n,extreme", [(8, 64, 32, None), (3, 30, 20, None), (4, 36, 16, (255, -128))])
def test_vnni_dense_emits_vpdpbusd_and_is_exact_where_it_runs(m, k, n, extreme):
    a, w = operands(np.random.default_rng(k), m, k, n, "uint8", extreme)
    ex, report = compile_module(dense_module(m, k, n, "uint8", w), qcompile.load_target("x86_vnni"))
    assert_one_tensorized_dense(report)
    ops = mnemonics(asm_of(ex))
    assert ops["vpdpbusd"] > 0, ops.most_common(12)
    if not HAS_VNNI:
        pytest.skip("compiled to vpdpbusd; running it needs a CPU with avx512_vnni (this one has none)")
    np.testing.assert_array_equal(run(ex, a), reference.qmatmul(a, 0, w, 0, acc_dtype="int32"))


# ----------------------------------------------------------------------------- tuning space

@pytest.mark.parametrize("target,instruction", [("x86_64", "vpmaddwd"), ("x86_vnni", "vpdpbusd")])
def test_tuning_space_tensorizes_the_packed_dense(target, instruction):
    """Every design of the MetaSchedule space tune() builds, and every candidate sampled from it,
    tensorizes the packed kernel with the target's intrinsic and builds (sampled vectorize
    annotations around the intrinsic used to fail 3 builds in 4); the builds are bit-exact (run where
    the CPU can)."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from qcompile.build import lower_passes
    from qcompile.intrin import use_cpu_tensor_intrinsics
    from qcompile.tune.tuner import serial_space, tuning_target, with_dot_intrinsics

    spec = qcompile.load_target(target)
    a_dtype = "uint8" if target == "x86_vnni" else "int8"
    m, k, n = 8, 36, 20   # K a multiple of both k (2, 4): no padding kernel; N is padded to 24 / 32
    a, w = operands(np.random.default_rng(7), m, k, n, a_dtype, None)
    tvm_target = tuning_target(spec, 1)
    with tvm_target:
        mod = PackDenseWeights(spec.intrinsics)(dense_module(m, k, n, a_dtype, w))
        for p in lower_passes(tvm_target):
            mod = p(mod)
    use_cpu_tensor_intrinsics(tvm_target)
    (func,) = [f for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    kernel = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    default = ms.TuneContext(mod=kernel, target=tvm_target, space_generator="post-order-apply",
                             search_strategy="replay-trace").space_generator
    names = [type(r).__name__ for r in default.sch_rules]
    space = with_dot_intrinsics(serial_space(default), spec.intrinsics)
    assert "MultiLevelTilingWithIntrin" not in [type(r).__name__ for r in space.sch_rules]  # TVM's, dropped
    ctx = ms.TuneContext(mod=kernel, target=tvm_target, space_generator=space,
                         search_strategy=ms.search_strategy.ReplayTrace(), rand_state=1)
    designs = ctx.generate_design_space()
    assert designs, names
    lanes = intrin.dot_intrin_for(spec.intrinsics, a_dtype, "int8").lanes
    wp = pack_weight(w, lanes, 4 if target == "x86_vnni" else 2)
    want = reference.qmatmul(a, 0, w, 0, acc_dtype="int32")
    # and candidates sampled from them, as the search measures them (random tile sizes, unrolling and
    # vectorize annotations, then the postprocessors)
    ctx.pre_tuning(max_trials=8, num_trials_per_iter=8, design_spaces=designs,
                   database=ms.database.MemoryDatabase(), cost_model=None)
    sampled = [c.sch for c in ctx.generate_measure_candidates()]
    assert len(sampled) == 8
    for i, sch in enumerate(designs + sampled):
        if i < len(designs):
            assert all(p.apply(sch) for p in space.postprocs)
        lib = tvm.compile(sch.mod, tvm_target)
        assert instruction in lib.mod.inspect_source("asm")
        if target == "x86_vnni" and not HAS_VNNI:
            continue
        out = tvm.runtime.tensor(np.zeros((1, m, n), np.int32))
        lib["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(wp), out)
        np.testing.assert_array_equal(out.numpy(), want)


def test_tuning_space_of_targets_without_dot_intrinsics_is_left_alone():
    """Only targets naming dot intrinsics get the packed-kernel rules (ARM ones too: tests/test_tune.py)."""
    from qcompile.tune.tuner import with_dot_intrinsics

    space = object()
    assert with_dot_intrinsics(space, ()) is space


# ----------------------------------------------------------------------------- a whole model

@needs_avx2
def test_digits_int8_same_outputs_with_and_without_the_tensorized_dense():
    spec = qcompile.load_target("x86_64")
    x = np.load(zoo.DIGITS_MODEL.replace("digits_cnn.onnx", "digits_test.npz"))
    x = x[x.files[0]][:8].astype(np.float32).reshape(-1, 1, 1, 8, 8)
    outs, notes = {}, {}
    for name, target in (("packed", spec), ("plain", dataclasses.replace(spec, intrinsics=()))):
        pipe = qcompile.Pipeline(target=target, qconfig=QConfig(), progress=False)
        art = pipe.run(zoo.DIGITS_MODEL, calib=zoo.digits_calib())
        outs[name] = np.stack([next(iter(art.run({"input": xi}).values())) for xi in x])
        notes[name] = " ".join(art.metadata.get("notes", []))
    assert "TensorizedDense 1" in notes["packed"] and "TensorizedDense" not in notes["plain"]
    assert np.abs(outs["plain"]).max() > 0
    np.testing.assert_array_equal(outs["packed"], outs["plain"])
