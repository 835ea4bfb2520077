"""A model's qcompile int8 build with and without the target's tensor intrinsics, in one process.

    python benchmarks/intrin_compare.py --models minilm          # x86_64, 1 thread
    python benchmarks/intrin_compare.py --models digits,minilm --rounds 5 --json out.json

Both builds come from the same calibration (QConfig() defaults); "plain" is the target with
``intrinsics: []`` (no weight packing, no tensorized kernels). The script checks that their outputs
are identical (realize is integer-exact, so packing must not change a bit), times them in
interleaved rounds (median of the rounds' medians; both builds see the same machine load), and
prints qcompile's per-kernel profile of each (``qcompile bench --profile``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(HERE))


def compare(name: str, target: str, threads: int, rounds: int, repeat: int, work: str) -> dict:
    import qcompile
    from benchmarks import datasets
    from qcompile.quantize.qconfig import QConfig
    from qcompile.runtime.bench import benchmark, profile
    from qcompile.runtime.profile import format_profile

    ds = datasets.load(name, 4, 8, work)
    spec = qcompile.load_target(target)
    builds = {"tensorized": spec, "plain": dataclasses.replace(spec, intrinsics=())}
    arts = {k: qcompile.compile(ds.model, target=t, qconfig=QConfig(), calib=ds.calib, input_shapes=ds.input_shapes)
            for k, t in builds.items()}
    feed = {k: v[:1] for k, v in ds.inputs.items()}
    outs = {k: a.run(feed) for k, a in arts.items()}
    identical = all(np.array_equal(outs["tensorized"][o], outs["plain"][o]) for o in outs["plain"])
    medians = {k: [] for k in arts}
    for _ in range(rounds):
        for k, a in arts.items():
            medians[k].append(benchmark(a, feed, threads=threads, warmup=5, repeat=repeat)["median_ms"])
    res = {"model": name, "target": target, "threads": threads, "identical_outputs": identical,
           "notes": {k: a.metadata.get("notes", []) for k, a in arts.items()},
           "round_medians_ms": medians, "median_ms": {k: float(np.median(v)) for k, v in medians.items()},
           "loadavg": list(os.getloadavg()), "profile": {}}
    print(f"\n{name}: outputs {'identical' if identical else 'DIFFERENT'}; median of {rounds} interleaved "
          f"medians: tensorized {res['median_ms']['tensorized']:.3f} ms, plain {res['median_ms']['plain']:.3f} ms "
          f"(load average {os.getloadavg()[0]:.1f})")
    for k, a in arts.items():
        prof = profile(a, feed, threads=threads, warmup=3, repeat=repeat, total_ms=res["median_ms"][k])
        print(f"== {name} {k}\n{format_profile(prof, limit=12)}")
        res["profile"][k] = {key: v for key, v in prof.items() if key not in ("threads", "target")}
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="minilm", help="comma-separated benchmarks/datasets models (default: minilm)")
    p.add_argument("--target", default="x86_64", help="qcompile target with intrinsics (default: x86_64)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default: 5)")
    p.add_argument("--repeat", type=int, default=30, help="timed calls per round (default: 30)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    if args.threads < 1 or args.rounds < 1 or args.repeat < 1:
        p.error("--threads, --rounds and --repeat must be >= 1")
    work = tempfile.mkdtemp(prefix="qcompile-intrin-")
    results = [compare(m, args.target, args.threads, args.rounds, args.repeat, work) for m in args.models.split(",")]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    return 0 if all(r["identical_outputs"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
