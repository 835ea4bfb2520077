"""GEMM microbenchmark: 1024x1024x1024 uint8 x int8 -> int32 through qcompile/TVM, against this CPU's peak.

    python benchmarks/gemm.py                          # compile (records + default schedules), measure, peak
    python benchmarks/gemm.py --tune 64                # first a short MetaSchedule run (64 trials) on the GEMM
    python benchmarks/gemm.py --threads 2 --size 512
    python benchmarks/gemm.py --no-intrinsics          # without the target's tensorized kernel, to compare

The GEMM is a one-op Relax model, C[M, N] = A[M, K] (uint8, input) @ B[K, N] (int8, constant weights,
seeded) with int32 accumulation, compiled by ``qcompile.compile`` for --target (auto: what this CPU runs)
with the tuning records of schedules/<target>/ (+ --records); ``--tune N`` first runs qcompile's
MetaSchedule tuner on it for N trials (records in --records DIR, else a temporary folder). The result is
checked against numpy bit for bit, then timed with TVM's time_evaluator on the VM's main (median of
--repeat calls). GOPS count 2 ops per multiply-accumulate: 2*M*N*K / seconds.

The peak is measured here, at run time: benchmarks/int8_peak.c is compiled with gcc and runs a
register-only loop of independent chains of the best int8 instruction this CPU has (``vpdpbusd`` zmm
with AVX-512 VNNI, else the AVX2 sequence ``vpmaddubsw + vpmaddwd + vpaddd``), on --threads threads, before
and after the GEMM (best of --peak-runs each). The fraction of peak is GEMM GOPS / peak GOPS at the same
thread count. The machine may be shared: the JSON has the load average, and both figures are best-of
and median so a busy moment shows.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(HERE))

from benchmarks.accuracy import _cpu, _git, _versions, write_json_atomic  # noqa: E402

PEAK_SOURCE = os.path.join(HERE, "int8_peak.c")
DEFAULT_JSON = os.path.join(HERE, "results", "gemm.json")
PEAK_ISAS = {
    "vnni512": {"flags": ("avx512_vnni", "avx512f"), "cflags": ["-DWITH_VNNI512", "-mavx512f", "-mavx512vnni"],
                "what": "vpdpbusd zmm (AVX-512 VNNI), 12 independent chains"},
    "avx2": {"flags": ("avx2",), "cflags": [],
             "what": "vpmaddubsw + vpmaddwd + vpaddd ymm (AVX2; vpmaddubsw saturates int16 pairs), 6 independent chains"},
}


# ============================================================================ peak

def pick_isa(flags: set) -> str:
    for isa in ("vnni512", "avx2"):
        if all(f in flags for f in PEAK_ISAS[isa]["flags"]):
            return isa
    raise SystemExit("this CPU has neither AVX-512 VNNI nor AVX2: no int8 SIMD peak to measure")


def build_peak(isa: str, work: str) -> str:
    cc = os.environ.get("CC", "gcc")
    if shutil.which(cc) is None:
        raise SystemExit(f"'{cc}' not found: the peak loop is compiled at run time (apt-get install gcc, or set CC)")
    exe = os.path.join(work, f"int8_peak_{isa}")
    cmd = [cc, "-O2", "-fopenmp", *PEAK_ISAS[isa]["cflags"], "-o", exe, PEAK_SOURCE]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"compiling the peak loop failed: {' '.join(cmd)}\n{proc.stderr}")
    return exe


def run_peak(exe: str, isa: str, iters: int, threads: int) -> float:
    """GOPS of one run of the loop."""
    out = subprocess.run([exe, isa, str(iters), str(threads)], capture_output=True, text=True, check=True).stdout
    _, _, _, ops, seconds = out.split()
    return float(ops) / float(seconds) / 1e9


def measure_peak(exe: str, isa: str, threads: int, runs: int, seconds: float = 0.3) -> dict:
    """Size the loop to about `seconds`, then `runs` runs: their GOPS (best is the peak)."""
    iters = 1_000_000
    while True:
        t = time.perf_counter()
        run_peak(exe, isa, iters, threads)
        dt = time.perf_counter() - t
        if dt > 0.05 or iters > 1 << 34:
            break
        iters *= 4
    iters = max(1, int(iters * seconds / dt))
    gops = [run_peak(exe, isa, iters, threads) for _ in range(runs)]
    return {"gops": [round(g, 2) for g in gops], "best_gops": max(gops), "median_gops": float(np.median(gops)),
            "iterations": iters, "threads": threads, "loadavg_1min": os.getloadavg()[0]}


# ============================================================================ the GEMM

def gemm_model(m: int, n: int, k: int, seed: int = 0):
    """A Relax model: main(a: uint8[m, k]) -> matmul(a, B) int32[m, n], B an int8[k, n] constant."""
    import tvm
    from tvm import relax

    from qcompile.model import Model, TensorSpec

    rng = np.random.default_rng(seed)
    b = rng.integers(-128, 128, (k, n), dtype=np.int8)
    bb = relax.BlockBuilder()
    a = relax.Var("a", relax.TensorType((m, k), "uint8"))
    with bb.function("main", [a]):
        with bb.dataflow():
            c = bb.emit_output(relax.op.matmul(a, relax.const(tvm.runtime.tensor(b)), out_dtype="int32"))
        bb.emit_func_output(c)
    model = Model(bb.get(), [TensorSpec("a", (m, k), "uint8")], [TensorSpec("c", (m, n), "int32")],
                  source=f"gemm {m}x{n}x{k} u8*s8->s32", format="relax")
    return model, b


def reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """int32 A @ B, exactly (int64 accumulation, then checked to fit int32)."""
    c = a.astype(np.int64) @ b.astype(np.int64)
    assert np.abs(c).max() < 2 ** 31
    return c.astype(np.int32)


def measure_gemm(art, a: np.ndarray, threads: int, repeat: int) -> dict:
    import tvm

    from qcompile.runtime.bench import set_threads

    set_threads(threads)
    dev = tvm.cpu()
    x = tvm.runtime.tensor(a, dev)
    art.vm["main"](x)  # warm up
    t = time.perf_counter()
    art.vm["main"](x)
    one = time.perf_counter() - t
    repeat = max(3, min(repeat, int(20.0 / max(one, 1e-6))))  # at most ~20 s of timed calls
    timer = art.vm.time_evaluator("main", dev, number=1, repeat=repeat)
    secs = np.asarray(timer(x).results)
    return {"median_ms": float(np.median(secs) * 1e3), "min_ms": float(secs.min() * 1e3), "repeat": int(repeat),
            "loadavg_1min": os.getloadavg()[0]}


def compile_gemm(model, target: str, records: list, intrinsics: bool = True):
    """intrinsics=False: the target without its `intrinsics:` (no weight packing, no tensorized
    kernel), i.e. the generic int8 schedule, to compare against."""
    import dataclasses

    import qcompile

    spec = qcompile.load_target(target)
    if not intrinsics:
        spec = dataclasses.replace(spec, intrinsics=())
    t = time.perf_counter()
    art = qcompile.compile(model, target=spec, records=records)
    return art, time.perf_counter() - t


def tune_gemm(model, target: str, records_dir: str, trials: int, threads: int) -> dict:
    from qcompile.tune.tuner import tune

    t = time.perf_counter()
    report = tune(model, target=target, records_dir=records_dir, trials=trials, trials_per_task=trials,
                  threads=threads, progress=True)
    print(report.table(), flush=True)
    return {"trials": trials, "seconds": round(time.perf_counter() - t, 1), "records_dir": records_dir,
            "report": report.to_json()}


# ============================================================================ CLI

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="1024", help="M=N=K, or MxNxK (default: 1024)")
    p.add_argument("--target", default="auto", help="qcompile target (default: auto)")
    p.add_argument("--threads", type=int, default=1, help="threads for the GEMM and the peak loop (default: 1)")
    p.add_argument("--repeat", type=int, default=50, help="timed GEMM calls, at most ~20 s of them (default: 50)")
    p.add_argument("--records", default=None, metavar="DIR",
                   help="tuning records to apply (besides schedules/<target>/), and where --tune writes")
    p.add_argument("--tune", type=int, default=0, metavar="TRIALS",
                   help="tune the GEMM with MetaSchedule for TRIALS trials first (default: 0, no tuning)")
    p.add_argument("--no-intrinsics", action="store_true",
                   help="build without the target's tensor intrinsics (no weight packing): the generic int8 kernel")
    p.add_argument("--peak-isa", choices=sorted(PEAK_ISAS), default=None,
                   help="instruction sequence of the peak loop (default: the best this CPU has)")
    p.add_argument("--peak-runs", type=int, default=5, help="runs of the peak loop before and after (default: 5)")
    p.add_argument("--json", default=DEFAULT_JSON, help="results file (default: benchmarks/results/gemm.json)")
    args = p.parse_args(argv)
    dims = [int(d) for d in args.size.lower().split("x")]
    if len(dims) == 1:
        dims *= 3
    if len(dims) != 3 or min(dims) < 1:
        p.error("--size takes N or MxNxK")
    args.m, args.n, args.k = dims
    if args.threads < 1 or args.repeat < 1 or args.peak_runs < 1 or args.tune < 0:
        p.error("--threads, --repeat, --peak-runs must be >= 1 and --tune >= 0")
    return args


def main(argv=None) -> int:
    from qcompile.cpu_features import host_cpu_flags

    args = parse_args(argv)
    flags = host_cpu_flags() or set()
    isa = args.peak_isa or pick_isa(flags)
    if not all(f in flags for f in PEAK_ISAS[isa]["flags"]):
        raise SystemExit(f"--peak-isa {isa} needs CPU flags {PEAK_ISAS[isa]['flags']}; this CPU lacks some")
    work = tempfile.mkdtemp(prefix="qcompile-gemm-")
    res = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": "python benchmarks/gemm.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "args": vars(args), "git": _git(), "versions": _versions(),
           "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "platform": platform.platform(),
                       "int8_flags": sorted(f for f in flags if "vnni" in f or f in ("avx2", "avx512f", "amx_int8")),
                       "loadavg_start": list(os.getloadavg())}}
    m, n, k = args.m, args.n, args.k
    ops = 2.0 * m * n * k
    try:
        exe = build_peak(isa, work)
        print(f"peak loop: {PEAK_ISAS[isa]['what']}, {args.threads} thread(s)", flush=True)
        before = measure_peak(exe, isa, args.threads, args.peak_runs)
        per_core = measure_peak(exe, isa, 1, args.peak_runs) if args.threads != 1 else before

        model, b = gemm_model(m, n, k)
        a = np.random.default_rng(1).integers(0, 256, (m, k), dtype=np.uint8)
        records = [args.records] if args.records else []
        if args.tune:
            rec_dir = args.records or os.path.join(work, "records")
            res["tuning"] = tune_gemm(model, args.target, rec_dir, args.tune, args.threads)
            records = [rec_dir]
        art, compile_s = compile_gemm(model, args.target, records, intrinsics=not args.no_intrinsics)
        print(f"compiled for {art.target_name} in {compile_s:.1f}s; {'; '.join(art.metadata.get('notes', [])) or 'no notes'}",
              flush=True)
        got = art.run({"a": a})["c"]
        want = reference(a, b)
        exact = bool(np.array_equal(got, want))
        gemm = measure_gemm(art, a, args.threads, args.repeat)
        after = measure_peak(exe, isa, args.threads, args.peak_runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    peak_best = max(before["best_gops"], after["best_gops"])
    peak_median = float(np.median(before["gops"] + after["gops"]))
    gemm.update({"gops_median": ops / (gemm["median_ms"] * 1e-3) / 1e9, "gops_best": ops / (gemm["min_ms"] * 1e-3) / 1e9})
    res.update({
        "gemm": {"m": m, "n": n, "k": k, "dtype": "uint8 x int8 -> int32", "target": art.target_name,
                 "intrinsics": list(art.target.get("intrinsics", [])),
                 "tvm_target": art.target.get("tvm_target"), "notes": art.metadata.get("notes", []),
                 "compile_s": round(compile_s, 2), "exact_vs_numpy": exact,
                 "max_abs_diff": int(np.abs(got.astype(np.int64) - want).max()), "threads": args.threads, **gemm},
        "peak": {"isa": isa, "instructions": PEAK_ISAS[isa]["what"], "threads": args.threads, "before": before,
                 "after": after, "best_gops": peak_best, "median_gops": peak_median,
                 "per_core_best_gops": per_core["best_gops"] if args.threads != 1 else peak_best},
        "fraction_of_peak": {"best": gemm["gops_best"] / peak_best, "median": gemm["gops_median"] / peak_median},
    })
    res["machine"]["loadavg_end"] = list(os.getloadavg())
    write_json_atomic(res, args.json)
    g, pk, fr = res["gemm"], res["peak"], res["fraction_of_peak"]
    print(f"\nGEMM {m}x{n}x{k} u8 x s8 -> s32, target {g['target']}, {args.threads} thread(s): "
          + ("bit-exact vs numpy" if exact else f"WRONG (max |diff| {g['max_abs_diff']})"))
    print(f"{'':24s} {'median':>10s} {'best':>10s}")
    print(f"{'GEMM ms':24s} {g['median_ms']:10.2f} {g['min_ms']:10.2f}   ({g['repeat']} calls)")
    print(f"{'GEMM GOPS':24s} {g['gops_median']:10.1f} {g['gops_best']:10.1f}")
    print(f"{'peak GOPS (' + isa + ')':24s} {pk['median_gops']:10.1f} {pk['best_gops']:10.1f}   "
          f"(before {before['best_gops']:.1f}, after {after['best_gops']:.1f}; per core {pk['per_core_best_gops']:.1f})")
    print(f"{'fraction of peak':24s} {100 * fr['median']:9.1f}% {100 * fr['best']:9.1f}%")
    la = res["machine"]
    print(f"load average (1 min) {la['loadavg_start'][0]:.1f} at start, {la['loadavg_end'][0]:.1f} at end, "
          f"{la['cores']} cores; wrote {args.json}")
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
