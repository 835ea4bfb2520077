"""Import / compile time and fp32 latency of real models, next to ONNX Runtime, in one run.

    python benchmarks/compile_times.py [--models digits,squeezenet,...] [--threads 1] [--repeat 10]

Models: the bundled digits CNN and the onnx wheel's light_* models (seeded random weights).
Prints a table and writes benchmarks/results/compile_times.json (atomically).
Latencies are untuned TVM kernels unless schedules/<target>/ has records for them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

import qcompile
from qcompile import zoo
from qcompile.io import write_json_atomic
from qcompile.cli.demo import ort_latency, ort_session
from qcompile.runtime.bench import benchmark

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def model_source(name: str):
    return zoo.DIGITS_MODEL if name == "digits" else zoo.light_model(name, seed=0)


def measure(name: str, target: str, threads: int, repeat: int) -> dict:
    src = model_source(name)
    t0 = time.perf_counter()
    model = qcompile.load_model(src)
    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    art = qcompile.compile(model, target=target)
    compile_s = time.perf_counter() - t0
    feed = {s.name: np.random.default_rng(0).random(s.shape).astype(s.dtype) for s in art.inputs}
    ours = benchmark(art, feed, threads=threads, warmup=1, repeat=repeat)
    data = src if isinstance(src, str) else src.SerializeToString()
    sess = ort_session(data, threads)
    ort_ms = ort_latency(sess, feed, warmup=2, repeat=max(repeat, 10))
    ref = sess.run(None, feed)
    got = list(art.run(feed).values())
    diff = max(float(np.abs(a - b).max() / max(1.0, np.abs(b).max())) for a, b in zip(got, ref))
    return {"model": name, "target": art.target_name, "threads": threads, "import_s": round(import_s, 2),
            "compile_s": round(compile_s, 2), "qcompile_median_ms": ours["median_ms"], "ort_median_ms": ort_ms,
            "ratio_vs_ort": ours["median_ms"] / ort_ms, "rel_max_diff_vs_ort": diff}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="digits," + ",".join(zoo.light_names()))
    ap.add_argument("--target", default="auto")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--json", default=os.path.join(RESULTS, "compile_times.json"))
    args = ap.parse_args(argv)
    rows = []
    print(f"{'model':14s} {'import s':>9s} {'compile s':>10s} {'qcompile ms':>12s} {'ORT ms':>9s} {'ratio':>7s} {'max diff':>9s}")
    for name in args.models.split(","):
        try:
            r = measure(name, args.target, args.threads, args.repeat)
        except Exception as err:  # noqa: BLE001 - one failing model must not lose the others' rows
            print(f"{name:14s} FAILED: {type(err).__name__}: {str(err).splitlines()[0][:120]}", file=sys.stderr)
            rows.append({"model": name, "error": str(err)})
            continue
        rows.append(r)
        print(f"{name:14s} {r['import_s']:9.2f} {r['compile_s']:10.2f} {r['qcompile_median_ms']:12.3f} "
              f"{r['ort_median_ms']:9.3f} {r['ratio_vs_ort']:7.1f} {r['rel_max_diff_vs_ort']:9.1e}", flush=True)
        write_json_atomic(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
