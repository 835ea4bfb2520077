"""CPU features: derived from the target's mcpu/mattr, checked at load, and what the code really uses.

The disassembly tests need no AVX-512 machine: they build the bundled model for every x86 target,
int8 and fp16, and fail on any instruction from an extension the target does not declare
(AVX512-FP16, AMX, AVX-512 in x86_64...). A build for mcpu=sapphirerapids, the bug this guards
against (AVX512-FP16 moves in a target every AVX-512 VNNI CPU was meant to run), must be caught.
"""

import shutil

import pytest

import qcompile
from qcompile import cpu_features, zoo
from qcompile.errors import TargetError
from qcompile.quantize.qconfig import QConfig
from qcompile.target import host_target_name, list_targets, load_target

X86_TARGETS = [t.name for t in list_targets() if t.arch == "x86_64"]
ARM_TARGETS = [t.name for t in list_targets() if t.arch == "aarch64"]


def _cpu(name, triple=None):
    d = {"kind": "llvm", "mcpu": name}
    if triple:
        d["mtriple"] = triple
    return d


@pytest.mark.parametrize("target", [t.name for t in list_targets()])
def test_every_llvm_feature_is_classified(target):
    """Each feature LLVM enables is either checked against /proc/cpuinfo (with a known flag name) or
    listed as a tuning knob / system extension; a new LLVM's new feature fails here, not on a user."""
    spec = load_target(target)
    assert cpu_features.unclassified_features(spec.tvm_target) == []
    for cpu in spec.cpus:
        claimed = dict(spec.tvm_target, mcpu=cpu)
        claimed.pop("mattr", None)
        assert cpu_features.unclassified_features(claimed) == [], cpu


def test_required_flags_come_from_mcpu():
    vnni, x86 = load_target("x86_vnni"), load_target("x86_64")
    assert {"avx512f", "avx512_vnni", "avx512bw"} <= set(vnni.requires_cpu_flags)
    assert "avx512_fp16" not in vnni.requires_cpu_flags and "amx_tile" not in vnni.requires_cpu_flags
    assert {"avx2", "fma"} <= set(x86.requires_cpu_flags)
    assert not any(f.startswith("avx512") for f in x86.requires_cpu_flags)
    # system instructions and tuning knobs are not demanded (hypervisors hide some of their flags)
    assert not {"invpcid", "pku", "xsaves", "fsrm", "rdseed"} & set(vnni.requires_cpu_flags)
    rpi5 = load_target("rpi5")
    assert "asimddp" in rpi5.requires_cpu_flags and "asimd" in rpi5.requires_cpu_flags
    assert "aes" not in load_target("rpi4").requires_cpu_flags  # the Pi 4 has no crypto extension


def _flags_of(cpu):
    return set(cpu_features.to_cpuinfo(cpu_features.required_features(_cpu(cpu)), "x86_64"))


@pytest.mark.parametrize("cpu,expected", [("znver3", "x86_64"), ("haswell", "x86_64"), ("znver4", "x86_vnni"),
                                          ("znver5", "x86_vnni"), ("cascadelake", "x86_vnni"),
                                          ("icelake-server", "x86_vnni"), ("sapphirerapids", "x86_vnni")])
def test_auto_picks_the_most_capable_target_this_cpu_runs(monkeypatch, cpu, expected):
    monkeypatch.setattr(cpu_features, "host_cpu_flags", lambda: _flags_of(cpu))
    monkeypatch.setattr(cpu_features, "host_arch", lambda: "x86_64")
    assert host_target_name() == expected


def test_auto_on_a_cpu_no_target_runs(monkeypatch):
    monkeypatch.setattr(cpu_features, "host_cpu_flags", lambda: {"sse", "sse2"})
    with pytest.raises(TargetError, match="no bundled target runs on this"):
        host_target_name()


def _write_target(tmp_path, body):
    path = tmp_path / "t.yaml"
    path.write_text("name: t\ndescription: test\n" + body)
    return str(path)


def test_hand_written_flags_are_refused(tmp_path):
    path = _write_target(tmp_path, "tvm_target: {kind: llvm, mcpu: haswell}\nrequires_cpu_flags: [avx2]\n")
    with pytest.raises(TargetError, match="'requires_cpu_flags' is no longer written by hand"):
        load_target(path)


def test_claimed_cpu_without_a_feature_is_refused(tmp_path):
    """The original bug as a target file: sapphirerapids code claimed to run on Zen 4."""
    path = _write_target(tmp_path, "tvm_target: {kind: llvm, mcpu: sapphirerapids}\ncpus: [sapphirerapids, znver4]\n")
    with pytest.raises(TargetError) as err:
        load_target(path)
    assert "claims 'znver4'" in str(err.value) and "avx512fp16" in str(err.value)
    path = _write_target(tmp_path, "tvm_target: {kind: llvm, mcpu: haswell}\ncpus: [no-such-cpu]\n")
    with pytest.raises(TargetError, match="'no-such-cpu', which LLVM does not know"):
        load_target(path)


def test_classifier_on_known_instructions():
    c = cpu_features.classify_x86
    assert c(["62", "f2", "7d", "48", "50", "c2"], "vpdpbusd", "%zmm2,%zmm0,%zmm0") == "avx512vnni"
    assert c(["c4", "e2", "7d", "50", "c2"], "vpdpbusd", "%ymm2,%ymm0,%ymm0") == "avxvnni"
    assert c(["62", "f5", "7d", "08", "7e", "c0"], "vmovw", "%xmm0,%eax") == "avx512fp16"
    assert c(["62", "f5", "7e", "08", "10", "07"], "vmovsh", "(%rdi),%xmm0") == "avx512fp16"
    assert c(["62", "f5", "6c", "48", "58", "c1"], "vaddph", "%zmm1,%zmm2,%zmm0") == "avx512fp16"
    assert c(["c4", "e2", "79", "13", "c0"], "vcvtph2ps", "%xmm0,%xmm0") is None  # F16C, on every AVX2 CPU
    assert c(["c4", "e3", "79", "1d", "c0", "00"], "vcvtps2ph", "$0x0,%xmm0,%xmm0") is None
    assert c(["62", "f1", "7c", "48", "28", "c1"], "vmovaps", "%zmm1,%zmm0") == "avx512f"
    assert c(["c5", "fc", "28", "c1"], "vmovaps", "%ymm1,%ymm0") is None
    assert c(["c4", "e2", "78", "5e", "c1"], "tdpbusd", "%tmm1,%tmm0,%tmm0") == "amx-tile"
    assert c(["c5", "f5", "f5", "c2"], "vpmaddwd", "%ymm2,%ymm1,%ymm0") is None


# ----------------------------------------------------------------------------- disassembly of real builds

needs_objdump = pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump (Debian: binutils)")


def _build(target, precision, out_dir):
    qc = QConfig(precision=precision)
    calib = zoo.digits_calib() if precision.startswith("int") else None
    return qcompile.compile(zoo.DIGITS_MODEL, target=target, out_dir=str(out_dir), qconfig=qc, calib=calib)


@needs_objdump
@pytest.mark.parametrize("precision", ["int8", "fp16"])
@pytest.mark.parametrize("target", X86_TARGETS)
def test_x86_code_uses_only_declared_extensions(target, precision, tmp_path):
    art = _build(target, precision, tmp_path / "out")
    spec = load_target(target)
    used = cpu_features.extensions_used(art.library_path, "x86_64")
    assert cpu_features.undeclared_extensions(art.library_path, spec.tvm_target) == {}, used
    avx512 = "avx512f" in cpu_features.llvm_features(spec.tvm_target)
    if precision == "int8" and "qcompile_dot_16x4_vnni" in spec.intrinsics:
        assert "avx512vnni" in used  # the check sees the kernels it guards: vpdpbusd is there
    if not avx512:
        assert not any(e.startswith(("avx512", "amx")) for e in used), used


@needs_objdump
def test_disassembly_catches_a_sapphirerapids_build(tmp_path):
    """The bug this guards against: mcpu=sapphirerapids code, judged against the features of the
    x86_vnni target, uses AVX512-FP16 (vmovw/vmovsh/...) that Zen 4/5 and Ice/Cascade Lake lack."""
    path = _write_target(tmp_path, "tvm_target: {kind: llvm, mcpu: sapphirerapids}\n")
    art = _build(path, "fp16", tmp_path / "out")
    bad = cpu_features.undeclared_extensions(art.library_path, load_target("x86_vnni").tvm_target)
    assert "avx512fp16" in bad, bad


needs_arm_tools = pytest.mark.skipif(
    shutil.which("aarch64-linux-gnu-gcc") is None or shutil.which("aarch64-linux-gnu-objdump") is None,
    reason="needs the aarch64 toolchain (Debian: gcc-aarch64-linux-gnu libc6-dev-arm64-cross)")


@needs_arm_tools
@pytest.mark.parametrize("target", ["arm_neon", "arm_neon_dotprod"])
def test_arm_code_uses_only_declared_extensions(target, tmp_path):
    art = _build(target, "int8", tmp_path / "out")
    spec = load_target(target)
    used = cpu_features.extensions_used(art.library_path, "aarch64")
    assert cpu_features.undeclared_extensions(art.library_path, spec.tvm_target) == {}, used
    if "dotprod" in spec.cpu_features:
        assert "dotprod" in used, used  # sdot in the int8 dense kernel
