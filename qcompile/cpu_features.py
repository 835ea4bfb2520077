"""CPU features: what a target's code may use, what this CPU has, and what a library really uses.

A target file names a CPU (``mcpu``) and extra features (``mattr``); LLVM turns them into the set of
features it may emit instructions from. That set, not a hand-written list, is what a CPU must have
to run the code: ``required_cpu_flags`` maps it to the flag names Linux prints in /proc/cpuinfo, so
an artifact checks them when it loads (a hand-written ``[avx512f, avx512_vnni]`` once let a
Sapphire Rapids build, full of AVX512-FP16 moves, load on a Zen 4 and die of SIGILL).

LLVM's feature list also holds scheduling knobs ("fast-gather", "fuse-aes") and system
instructions LLVM only emits when a program names them (``invpcid``, ``xsaves``); those are
listed in ``_NOT_CHECKED`` with the reason, and hypervisors often hide their flags. A feature in
neither table is unknown: ``unclassified_features`` names it (a test fails on any, so a new LLVM
cannot slip a feature past the check unseen).

``extensions_used(library)`` disassembles a built library (objdump) and returns the instruction
set extensions its code really uses, by LLVM feature name; ``undeclared_extensions`` compares them
with what the target declares. This is how a build for a CPU we do not have is kept honest.
"""

from __future__ import annotations

import re
import shutil
import subprocess

# LLVM feature name -> /proc/cpuinfo flag, per architecture.
_X86_FLAGS = {
    "64bit": "lm", "x87": "fpu", "cmov": "cmov", "cx8": "cx8", "cx16": "cx16", "mmx": "mmx", "fxsr": "fxsr",
    "sahf": "lahf_lm", "sse": "sse", "sse2": "sse2", "sse3": "pni", "ssse3": "ssse3", "sse4.1": "sse4_1",
    "sse4.2": "sse4_2", "crc32": "sse4_2", "sse4a": "sse4a", "popcnt": "popcnt", "lzcnt": "abm", "movbe": "movbe",
    "bmi": "bmi1", "bmi2": "bmi2", "adx": "adx", "prfchw": "3dnowprefetch", "prefetchi": "prefetchi",
    "aes": "aes", "pclmul": "pclmulqdq", "sha": "sha_ni", "gfni": "gfni", "vaes": "vaes",
    "vpclmulqdq": "vpclmulqdq", "f16c": "f16c", "fma": "fma", "avx": "avx", "avx2": "avx2",
    "avxvnni": "avx_vnni", "avxvnniint8": "avx_vnni_int8", "avxifma": "avx_ifma",
    "avx512f": "avx512f", "avx512cd": "avx512cd", "avx512bw": "avx512bw", "avx512dq": "avx512dq",
    "avx512vl": "avx512vl", "avx512vnni": "avx512_vnni", "avx512bf16": "avx512_bf16",
    "avx512fp16": "avx512_fp16", "avx512ifma": "avx512ifma", "avx512vbmi": "avx512vbmi",
    "avx512vbmi2": "avx512_vbmi2", "avx512bitalg": "avx512_bitalg", "avx512vpopcntdq": "avx512_vpopcntdq",
    "avx512vp2intersect": "avx512_vp2intersect",
    "amx-tile": "amx_tile", "amx-int8": "amx_int8", "amx-bf16": "amx_bf16", "amx-fp16": "amx_fp16",
}
_AARCH64_FLAGS = {
    "fp-armv8": "fp", "neon": "asimd", "crc": "crc32", "aes": "aes", "sha2": "sha2", "sha3": "sha3",
    "lse": "atomics", "rdm": "asimdrdm", "rcpc": "lrcpc", "dotprod": "asimddp", "fullfp16": "asimdhp",
    "fp16fml": "asimdfhm", "complxnum": "fcma", "jsconv": "jscvt", "i8mm": "i8mm", "bf16": "bf16",
    "sve": "sve", "sve2": "sve2", "ssbs": "ssbs", "flagm": "flagm", "sb": "sb", "dit": "dit",
    "pauth": "paca", "lse2": "uscat", "sve-bitperm": "svebitperm", "mte": "mte", "bti": "bti", "sm4": "sm4",
}
FLAGS = {"x86_64": _X86_FLAGS, "aarch64": _AARCH64_FLAGS}

# Features not checked against /proc/cpuinfo, and why.
_NOT_CHECKED = {
    "x86_64": {
        # the mode, and instructions every x86-64 CPU has
        "64bit-mode", "nopl",
        # system or privileged instructions, emitted only when a program names them (TVM never does)
        "fsgsbase", "invpcid", "pku", "xsave", "xsavec", "xsaveopt", "xsaves", "rdrnd", "rdseed", "rdpid",
        "rdpru", "clflushopt", "clwb", "clzero", "mwaitx", "wbnoinvd", "pconfig", "ptwrite", "enqcmd", "uintr",
        "waitpkg", "tsxldtrk", "serialize", "shstk", "cldemote", "movdiri", "movdir64b", "hreset", "kl", "widekl",
        "sgx", "rtm", "lwp", "tbm", "xop", "fma4",
        # string-move tuning: rep movsb exists everywhere, these say it is fast
        "ermsb", "fsrm",
        # branch-hint prefixes: older CPUs ignore them
        "branch-hint",
    },
    "aarch64": {
        # architecture versions: the features they add are listed one by one
        "v8a", "v8.1a", "v8.2a", "v8.3a", "v8.4a", "v8.5a", "v8.6a", "v8.7a", "v8.8a", "v8.9a",
        "v9a", "v9.1a", "v9.2a", "v9.3a", "v9.4a", "v9.5a",
        # system registers, exception levels, tracing, memory-system and virtualization extensions
        "CONTEXTIDREL2", "el2vmsa", "el3", "lor", "pan", "pan-rwv", "ras", "uaops", "vh", "ete", "trbe",
        "perfmon", "spe", "am", "mpam", "nv", "sel2", "tlb-rmi", "tracev8.4", "predres", "specrestrict",
        "altnzcv", "fptoint", "rcpc-immo", "ccidx", "fpac", "rand", "amvs", "ecv", "fgt", "hcx", "wfxt", "xs",
        "spe-eef", "ssbs", "ccpp", "ccdp",
    },
}
# Scheduling and cost-model knobs: they change which instructions are picked, not which exist.
_TUNING = re.compile(r"^(fast|slow|false-deps|tuning|prefer|no-bypass|fuse|zcz|zcm|no-zcz|arith|disable|"
                     r"max-interleave|store-pair|alternate|aggressive|addr-lsl|alu-lsl|predictable|use-postra|"
                     r"enable-select-opt|allow-light|idivq-to-divl|macrofusion|branchfusion|sbb-dep-breaking|"
                     r"vzeroupper|lea-uses-ag|pad-short-functions|use-glm-div-sqrt-costs|avoid-|cmp-bcc-fusion|"
                     r"use-fixed-over-scalable|use-wzr|balance-fp-ops|no-sve-fp-ld1r)")
# aarch64 CPU-name features that only select a tuning model
_CPU_NAME = re.compile(r"^(a\d+|neoverse[\w-]*|apple-[\w-]+|cortex-[\w-]+|exynos[\w-]*|kryo[\w-]*|falkor|saphira|"
                       r"thunderx[\w-]*)$")


def arch_of(tvm_target: dict) -> str:
    """'x86_64' or 'aarch64' (or another LLVM arch name) for a target dict; no mtriple means this host."""
    triple = tvm_target.get("mtriple")
    if not triple:
        import tvm

        triple = str(tvm.target.codegen.llvm_get_system_triple())
    arch = triple.split("-", 1)[0].lower()
    return {"arm64": "aarch64", "amd64": "x86_64"}.get(arch, arch)


def llvm_features(tvm_target: dict) -> set[str]:
    """Every feature LLVM enables for this target dict (mcpu + mattr), by LLVM's names."""
    import tvm

    if tvm_target.get("kind", "llvm") != "llvm":
        return set()
    return {str(f) for f in tvm.target.codegen.llvm_get_cpu_features(tvm.target.Target(dict(tvm_target)))}


def checked(feature: str, arch: str) -> bool:
    """Whether a feature means instructions a CPU must have (False for knobs and system extensions)."""
    if feature in _NOT_CHECKED.get(arch, ()) or _TUNING.match(feature):
        return False
    return not (arch == "aarch64" and _CPU_NAME.match(feature))


def required_features(tvm_target: dict) -> tuple[str, ...]:
    """The LLVM features of this target a CPU must have to run its code, sorted."""
    arch = arch_of(tvm_target)
    return tuple(sorted(f for f in llvm_features(tvm_target) if checked(f, arch)))


def to_cpuinfo(features, arch: str) -> tuple[str, ...]:
    """LLVM feature names -> /proc/cpuinfo flags (a feature without a known flag keeps its name)."""
    table = FLAGS.get(arch, {})
    return tuple(sorted({table.get(f, f.replace(".", "_").replace("-", "_")) for f in features}))


def required_cpu_flags(tvm_target: dict) -> tuple[str, ...]:
    """The /proc/cpuinfo flags a CPU needs to run code built for this target dict."""
    return to_cpuinfo(required_features(tvm_target), arch_of(tvm_target))


def unclassified_features(tvm_target: dict) -> list[str]:
    """Features of this target that neither table knows: each needs a line in FLAGS or _NOT_CHECKED."""
    arch = arch_of(tvm_target)
    table = FLAGS.get(arch, {})
    return sorted(f for f in llvm_features(tvm_target) if checked(f, arch) and f not in table)


def host_cpu_flags() -> set[str] | None:
    """The flags of this machine's CPU from /proc/cpuinfo ('flags' on x86, 'Features' on Arm); None off Linux."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key = line.split(":", 1)[0].strip()
                if key in ("flags", "Features"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def host_arch() -> str:
    import platform

    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


# ----------------------------------------------------------------------------- what a library uses

# x86 mnemonics (AT&T, as objdump prints them) -> the extension that introduced them.
_X86_MNEMONICS = [
    (re.compile(r"^(tile\w+|tdp\w+|ldtilecfg|sttilecfg)$"), "amx-tile"),
    (re.compile(r"^(vcvtne2ps2bf16|vcvtneps2bf16|vdpbf16ps)"), "avx512bf16"),
    (re.compile(r"^(vpermb|vpermi2b|vpermt2b|vpmultishiftqb)$"), "avx512vbmi"),
    (re.compile(r"^(vpcompress[bw]|vpexpand[bw]|vpshl?dv?[wdq]|vpshrdv?[wdq])$"), "avx512vbmi2"),
    (re.compile(r"^vpmadd52[lh]uq$"), "avx512ifma"),
    (re.compile(r"^(vpopcnt[bw]|vpshufbitqmb)$"), "avx512bitalg"),
    (re.compile(r"^vpopcnt[dq]$"), "avx512vpopcntdq"),
    (re.compile(r"^vp2intersect[dq]$"), "avx512vp2intersect"),
    (re.compile(r"^v?gf2p8"), "gfni"),
]
_F16C = {"vcvtph2ps", "vcvtps2ph"}
_FP16 = re.compile(r"^v\w*(ph|sh)[xyzlqw]?$|^v\w*(2ph|ph2|2sh|sh2)\w*$|^vmovw$")
_VNNI = re.compile(r"^vpdp(bus|ws)ds?$")
_LEGACY_PREFIXES = {"66", "67", "f2", "f3", "2e", "3e", "26", "36", "64", "65", "f0"}
_AVX512_REGS = re.compile(r"%(zmm\d+|k[0-7]\b|[xy]mm(1[6-9]|2\d|3[01])\b)|\{%k[0-7]\}")
_AARCH64_MNEMONICS = [
    (re.compile(r"^(sdot|udot)$"), "dotprod"),
    (re.compile(r"^(smmla|ummla|usmmla|usdot|sudot)$"), "i8mm"),
    (re.compile(r"^(bfdot|bfmmla|bfcvt\w*|bfmlal\w*)$"), "bf16"),
]
_SVE_REGS = re.compile(r"\bz\d+\.[bhsdq]\b|\bp\d+/[zm]\b")


def classify_x86(opcode_bytes: list[str], mnemonic: str, operands: str) -> str | None:
    """The extension one x86 instruction needs beyond AVX2, by LLVM feature name (None: AVX2 or older)."""
    for pattern, ext in _X86_MNEMONICS:
        if pattern.match(mnemonic):
            return ext
    if mnemonic not in _F16C and _FP16.match(mnemonic):
        return "avx512fp16"
    first = next((b for b in opcode_bytes if b not in _LEGACY_PREFIXES), "")
    evex = first == "62"  # in 64-bit mode 0x62 only starts an EVEX (AVX-512) instruction
    if _VNNI.match(mnemonic):
        return "avx512vnni" if evex else "avxvnni"
    if evex or _AVX512_REGS.search(operands):
        return "avx512f"
    return None


def classify_aarch64(mnemonic: str, operands: str) -> str | None:
    for pattern, ext in _AARCH64_MNEMONICS:
        if pattern.match(mnemonic):
            return ext
    if _SVE_REGS.search(operands):
        return "sve"
    return None


_LINE = re.compile(r"^\s*[0-9a-f]+:\s+((?:[0-9a-f]{2} )+)\s*(.*)$")


def _objdump(arch: str) -> str:
    names = {"x86_64": ["objdump"], "aarch64": ["aarch64-linux-gnu-objdump", "objdump"]}.get(arch, ["objdump"])
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise FileNotFoundError(f"no {' or '.join(names)} on PATH (Debian: binutils, binutils-aarch64-linux-gnu)")


def extensions_used(library: str, arch: str = "x86_64") -> dict[str, list[str]]:
    """{extension: [a few instructions using it]} for the code of a built shared library."""
    flags = ["-d", "--no-show-raw-insn"] if arch == "aarch64" else ["-d"]
    proc = subprocess.run([_objdump(arch), *flags, library], capture_output=True, text=True, check=True)
    found: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        if arch == "aarch64":
            m = re.match(r"^\s*[0-9a-f]+:\s+(\S+)\s*(.*)$", line)
            if not m:
                continue
            ext = classify_aarch64(m.group(1), m.group(2))
            text = f"{m.group(1)} {m.group(2)}".strip()
        else:
            m = _LINE.match(line)
            if not m or not m.group(2):
                continue  # a continuation line of a long instruction's bytes
            parts = m.group(2).split(None, 1)
            if parts[0].startswith("{") and len(parts) > 1:  # '{vex} vpdpbusd ...', '{evex} ...'
                parts = parts[1].split(None, 1)
            mnemonic, operands = parts[0], parts[1] if len(parts) > 1 else ""
            ext = classify_x86(m.group(1).split(), mnemonic, operands)
            text = f"{mnemonic} {operands}".strip()
        if ext is not None:
            examples = found.setdefault(ext, [])
            if len(examples) < 3:
                examples.append(text)
    return found


def undeclared_extensions(library: str, tvm_target: dict) -> dict[str, list[str]]:
    """Extensions the library's code uses that the target does not declare (should be empty)."""
    arch = arch_of(tvm_target)
    declared = llvm_features(tvm_target)
    return {ext: ex for ext, ex in extensions_used(library, arch).items() if ext not in declared}
