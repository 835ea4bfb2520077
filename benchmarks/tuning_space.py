"""How many of the candidates `qcompile tune` samples from its tensorized tuning spaces build.

    python benchmarks/tuning_space.py                                   # every target, 256 candidates per space
    python benchmarks/tuning_space.py --targets arm_neon --samples 64
    python benchmarks/tuning_space.py --space tvm                       # TVM's default space, for comparison

A candidate that does not build is a wasted trial; a space where most fail makes a short tuning run
fail outright (issue 14: a 2-trial ARM run drew only failing candidates). For each target with
dot-product intrinsics (``intrinsics:`` in its YAML) the bundled digits CNN is quantized to int8 and
lowered as ``qcompile tune`` lowers it; its packed kernels are the tensorized spaces: ``dense`` (the
packed dense layer) and ``conv`` (its three packed convolutions). From each space ``--samples``
candidates are drawn (a conv space splits them over its kernels) by MetaSchedule's replay-trace
strategy, with ``--seed`` and one search thread, so a rerun draws the same candidates, from the space
tune() searches (``qcompile.tune.tuner.tuning_space``, kernels on one thread as ``--threads 1``). They
are built by the builder tune uses (``tuner.local_builder``: TVM's build, then for ARM the cross link
of each candidate into an aarch64 .so), two at a time.

Per space: candidates built / sampled, how many tensorize the packed block with the target's
intrinsic (a ``Tensorize`` instruction in the candidate's trace; the others come from designs
without it, e.g. the x86 spaces' AddRFactor designs of the digits CNN's matrix-vector dense), and
each distinct root error (``tuner.root_error``) with its count. The table goes to stdout, the details (per kernel, with the
first failing candidate's TIR trace per error) to ``--json`` (default
benchmarks/results/tuning_space.json). ``--space tvm`` samples TVM's default space instead (serial,
without qcompile's intrinsic rules: what tune searched on ARM targets before issue 14).

Exit status: 0 when every candidate sampled built and every space tensorized some, 1 otherwise, 2 on
bad input.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(HERE))

from benchmarks.accuracy import _cpu, _git, _versions, write_json_atomic  # noqa: E402

TARGETS = ("x86_64", "x86_vnni", "arm_neon", "arm_neon_dotprod")
KINDS = {"dense": "qcompile_packed_dense", "conv": "qcompile_packed_conv"}  # space -> task name part
DEFAULT_JSON = os.path.join(HERE, "results", "tuning_space.json")
BATCH = 32  # candidates per builder call, as tune's num_trials_per_iter


# ============================================================================ the kernels

def packed_kernels(spec) -> dict:
    """{space: [(task name, IRModule)]}: the digits CNN's packed kernels, lowered as tune lowers them."""
    import qcompile
    from qcompile import zoo
    from qcompile.quantize.qconfig import QConfig
    from qcompile.tune import tuner

    pipe = qcompile.Pipeline(target=spec, qconfig=QConfig(), input_shapes={"input": (1, 1, 8, 8)}, progress=False)
    state = tuner.lowered_module(zoo.DIGITS_MODEL, calib=zoo.digits_calib(), pipeline=pipe)
    tasks = tuner.extract_tasks(state.mod, tuner.tuning_target(spec, 1))
    out = {}
    for space, part in KINDS.items():
        found = sorted((t.task_name, t.dispatched[0]) for t in tasks if part in t.task_name)
        if found:
            out[space] = found
    return out


def search_space(spec, tvm_target, mod, which: str):
    """The space tune() samples ("qcompile"), or TVM's default one made serial ("tvm")."""
    from tvm.s_tir import meta_schedule as ms

    from qcompile.tune import tuner

    if which == "qcompile":
        return tuner.tuning_space(spec, tvm_target, mod, threads=1)
    from qcompile.intrin import use_cpu_tensor_intrinsics

    use_cpu_tensor_intrinsics(tvm_target)
    default = ms.TuneContext(mod=mod, target=tvm_target, space_generator="post-order-apply",
                             search_strategy="replay-trace", task_name="template").space_generator
    return tuner.serial_space(default)


# ============================================================================ sample, build, count

def sample(space, tvm_target, mod, n: int, seed: int) -> list:
    """`n` candidates drawn by replay-trace, on one search thread (see tuner.search_threads)."""
    from tvm.s_tir import meta_schedule as ms

    ctx = ms.TuneContext(mod=mod, target=tvm_target, space_generator=space,
                         search_strategy=ms.search_strategy.ReplayTrace(), rand_state=seed, num_threads=1,
                         task_name="sample")
    ctx.pre_tuning(max_trials=n, num_trials_per_iter=n, design_spaces=ctx.generate_design_space(),
                   database=ms.database.MemoryDatabase(), cost_model=None)
    try:
        return list(ctx.generate_measure_candidates() or [])
    finally:
        ctx.post_tuning()


def tensorizes_with(candidate, names) -> bool:
    """The candidate's trace tensorizes a block with one of the target's intrinsics."""
    return any(inst.kind.name == "Tensorize" and str(inst.attrs[0]) in names for inst in candidate.sch.trace.insts)


def build(builder, tvm_target, candidates) -> list:
    """Builder results of `candidates` (their artifacts deleted); in batches, as tune sends them."""
    from tvm.s_tir import meta_schedule as ms

    results = []
    for i in range(0, len(candidates), BATCH):
        batch = candidates[i:i + BATCH]
        results += builder.build([ms.builder.BuilderInput(c.sch.mod, tvm_target) for c in batch])
    for r in results:
        if r.artifact_path:
            shutil.rmtree(os.path.dirname(r.artifact_path), ignore_errors=True)
    return results


def count_kernel(spec, tvm_target, builder, name, mod, n, seed, which) -> dict:
    from qcompile.tune.tuner import root_error

    start = time.perf_counter()
    candidates = sample(search_space(spec, tvm_target, mod, which), tvm_target, mod, n, seed)
    results = build(builder, tvm_target, candidates)
    errors, example = collections.Counter(), {}
    for cand, res in zip(candidates, results):
        if res.error_msg:
            line = root_error(res.error_msg)
            errors[line] += 1
            example.setdefault(line, str(cand.sch.trace))
    return {"task": name, "sampled": len(candidates), "built": sum(not r.error_msg for r in results),
            "tensorized": sum(tensorizes_with(c, spec.intrinsics) for c in candidates),
            "errors": [{"error": e, "count": k, "first_trace": example[e]} for e, k in errors.most_common()],
            "seconds": round(time.perf_counter() - start, 1)}


def split(n: int, parts: int) -> list[int]:
    """`n` samples over `parts` kernels, as evenly as possible (the first ones get the remainder)."""
    return [n // parts + (i < n % parts) for i in range(parts)]


def count_target(name: str, samples: int, seed: int, which: str) -> list[dict]:
    """One row per tensorized space of target `name`; a target that cannot build here gives one skipped row."""
    import qcompile
    from qcompile.errors import ArtifactError
    from qcompile.tune import tuner

    spec = qcompile.load_target(name)
    tvm_target = tuner.tuning_target(spec, 1)
    try:
        builder = tuner.local_builder(spec.tuning.builder_timeout_s, max_workers=2, export_spec=spec.export)
    except ArtifactError as err:  # no cross compiler: say which package, count nothing
        return [{"target": name, "space": "-", "skipped": str(err)}]
    rows = []
    try:
        for space, kernels in packed_kernels(spec).items():
            per = [count_kernel(spec, tvm_target, builder, task, mod, k, seed, which)
                   for (task, mod), k in zip(kernels, split(samples, len(kernels))) if k]
            errors = collections.Counter()
            for p in per:
                for e in p["errors"]:
                    errors[e["error"]] += e["count"]
            rows.append({"target": name, "space": space, "intrinsics": list(spec.intrinsics),
                         "kernels": len(per), **{k: sum(p[k] for p in per) for k in ("sampled", "built", "tensorized")},
                         "errors": dict(errors.most_common()), "per_kernel": per})
            print(f"  {name} {space}: {rows[-1]['built']}/{rows[-1]['sampled']} built", file=sys.stderr, flush=True)
    finally:
        builder.shutdown()
    return rows


# ============================================================================ report

def fraction(row) -> str:
    return f"{row['built'] / row['sampled']:.3f}" if row.get("sampled") else "-"


def table(rows) -> str:
    lines = [("target", "space", "kernels", "sampled", "built", "fraction", "tensorized", "errors (count: root error)")]
    for r in rows:
        if "skipped" in r:
            lines.append((r["target"], "-", "-", "-", "-", "-", "-", f"skipped: {r['skipped']}"))
            continue
        errs = "; ".join(f"{k}: {e[:110]}" for e, k in r["errors"].items()) or "-"
        lines.append((r["target"], r["space"], str(r["kernels"]), str(r["sampled"]), str(r["built"]), fraction(r),
                      str(r["tensorized"]), errs))
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]) - 1)]
    out = ["  ".join(c.ljust(w) for c, w in zip(line[:-1], widths)) + "  " + line[-1] for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 26)
    return "\n".join(out)


def all_good(rows) -> bool:
    """Every sampled candidate built, and every space tensorizes some (skipped targets aside)."""
    counted = [r for r in rows if "skipped" not in r]
    return bool(counted) and all(r["sampled"] and r["built"] == r["sampled"] and r["tensorized"] for r in counted)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated target names (default: {','.join(TARGETS)})")
    p.add_argument("--samples", type=int, default=256, help="candidates per space (default: 256)")
    p.add_argument("--seed", type=int, default=0, help="MetaSchedule's seed (default: 0)")
    p.add_argument("--space", choices=["qcompile", "tvm"], default="qcompile",
                   help="the space tune() searches (default), or TVM's default space for the target")
    p.add_argument("--json", default=DEFAULT_JSON, help=f"write the results here (default: {DEFAULT_JSON})")
    args = p.parse_args(argv)
    if args.samples < 1:
        p.error(f"--samples must be >= 1, got {args.samples}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import logging

    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    import qcompile
    from qcompile.errors import QCompileError

    names = [t.strip() for t in args.targets.split(",") if t.strip()]
    for name in names:
        try:
            spec = qcompile.load_target(name)
        except QCompileError as err:
            print(f"tuning_space.py: {err}", file=sys.stderr)
            return 2
        if not spec.intrinsics:
            print(f"tuning_space.py: target '{name}' names no dot-product intrinsics: it has no tensorized "
                  "space to sample", file=sys.stderr)
            return 2
    start = time.perf_counter()
    rows = []
    for name in names:
        rows += count_target(name, args.samples, args.seed, args.space)
    seconds = time.perf_counter() - start
    print(table(rows))
    print(f"{sum(r.get('sampled', 0) for r in rows)} candidates in {seconds:.0f} s "
          f"(seed {args.seed}, {args.space} space); details in {args.json}")
    command = " ".join(["python", "benchmarks/tuning_space.py", *(sys.argv[1:] if argv is None else argv)])
    write_json_atomic({"command": command, "date": datetime.datetime.now().isoformat(timespec="seconds"), "seed": args.seed,
                       "samples_per_space": args.samples, "space": args.space, "seconds": round(seconds, 1),
                       "rows": rows, "all_built_and_tensorized": all_good(rows),
                       "machine": {"cpu": _cpu(), "loadavg": list(os.getloadavg())}, "versions": _versions(),
                       "git": _git()}, args.json)
    return 0 if all_good(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
