"""The `qcompile` command line.

    qcompile compile MODEL [--target NAME|FILE.yaml] [--input-shape NAME:DIMS ...] -o OUT_DIR
    qcompile run OUT_DIR --inputs IN.npz --output OUT.npz
    qcompile bench OUT_DIR [--inputs IN.npz] [--threads N] [--warmup W] [--repeat R] [--json FILE] [--profile]
    qcompile info MODEL_OR_OUT_DIR
    qcompile targets

Errors in the user's input print one line ("qcompile: error: ...") and exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .. import cpu_features
from ..errors import QCompileError
from ..io import load_npz, save_npz_atomic, write_json_atomic  # noqa: F401  (sub-commands use them too)

EPILOG = "Run 'qcompile COMMAND --help' for the options of one command."


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return args.func(args) or 0
    except QCompileError as err:
        print(f"qcompile: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qcompile: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qcompile",
        description="Quantize and compile fp32 models (ONNX, PyTorch torch.export, TFLite) into integer "
                    "models for a hardware target with Apache TVM, then run and measure them.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in (_add_compile, _add_run, _add_bench, _add_info, _add_targets, _add_demo):
        add(sub)
    for extra in _extra_commands():
        extra(sub)
    return parser


def _extra_commands():
    """Subcommands contributed by later capabilities (tune, rpc, report, ...), when present."""
    import importlib

    out = []
    for mod_name in ("qcompile.cli.quantize", "qcompile.cli.tune", "qcompile.cli.rpc", "qcompile.cli.report",
                     "qcompile.cli.board"):
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as err:
            if err.name != mod_name:
                raise
            continue
        out.extend(mod.COMMANDS)
    return out


def _version() -> str:
    from .. import __version__

    return f"qcompile {__version__}"


# ----------------------------------------------------------------------------- compile

def add_compile_options(p):
    """Options shared by commands that compile (compile, tune)."""
    p.add_argument("model", metavar="MODEL", help="model file: .onnx, .tflite, or .pt2 (torch.export.save)")
    p.add_argument("--target", "-t", default="auto",
                   help="target name (see 'qcompile targets') or path to a target .yaml; "
                        "'auto' picks the best bundled target for this CPU (default: auto)")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME:DIMS",
                   help="fix an input's shape, e.g. --input-shape x:1x3x48x320 (repeatable); "
                        "dynamic dims not given default to 1")
    p.add_argument("--records", action="append", default=[], metavar="DIR",
                   help="MetaSchedule record folder to apply (repeatable), in addition to schedules/<target>/")


def _add_compile(sub):
    p = sub.add_parser("compile", help="import, (quantize,) and compile a model into an artifact folder",
                       description="Import a model, optionally quantize it, compile it with TVM for a target, "
                                   "and write an artifact folder (shared library + metadata.json).",
                       epilog="example: qcompile compile model.onnx --target x86_64 -o out/")
    add_compile_options(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="artifact folder to write (atomically)")
    p.add_argument("--no-default-schedule", dest="default_schedule", action="store_false", default=None,
                   help="leave kernels without a tuning record as TVM's naive loop nests (default: the target's "
                        "tuning.default_schedule, on: a fixed tiled/vectorized schedule, see docs/tuning.md)")
    p.add_argument("--pass", dest="passes", action="append", default=[], metavar="MODULE:OBJECT",
                   help="a user Relax pass to insert, e.g. mypasses:CountOps (repeatable; pair each with --at)")
    p.add_argument("--at", action="append", default=[], metavar="WHEN:STAGE",
                   help="where to insert the matching --pass: after:preprocess, before:lower, ... "
                        "(stages: import preprocess annotate calibrate realize offload lower apply_records build export)")
    try:
        from .quantize import add_quantize_options
    except ModuleNotFoundError:
        pass
    else:
        add_quantize_options(p)
    p.set_defaults(func=cmd_compile)


def load_user_pass(spec: str):
    """'pkg.module:object' or 'path/to/file.py:object' -> the object (a Pass, or a class/factory of one)."""
    import importlib
    import importlib.util

    from ..errors import ConfigError

    mod_name, sep, obj_name = spec.rpartition(":")
    if not sep or not mod_name or not obj_name:
        raise ConfigError(f"--pass '{spec}': expected MODULE:OBJECT, e.g. mypasses:CountOps")
    try:
        if mod_name.endswith(".py"):
            loader_spec = importlib.util.spec_from_file_location(os.path.basename(mod_name)[:-3], mod_name)
            if loader_spec is None or not os.path.isfile(mod_name):
                raise ConfigError(f"--pass '{spec}': no such file {mod_name}")
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            sys.path.insert(0, os.getcwd())
            module = importlib.import_module(mod_name)
    except ImportError as err:
        raise ConfigError(f"--pass '{spec}': cannot import {mod_name}: {err}") from None
    obj = getattr(module, obj_name, None)
    if obj is None:
        raise ConfigError(f"--pass '{spec}': {mod_name} has no attribute '{obj_name}'")
    import tvm

    if isinstance(obj, type) or (callable(obj) and not isinstance(obj, tvm.transform.Pass) and _takes_no_args(obj)):
        obj = obj()  # a pass class (e.g. a @function_pass class) or a factory
    return obj


def _takes_no_args(fn) -> bool:
    import inspect

    try:
        return not any(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                       for p in inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False


def make_pipeline(args, qconfig=None):
    from ..errors import ConfigError
    from ..pipeline import Pipeline

    pipe = Pipeline(target=args.target, qconfig=qconfig, records=args.records, input_shapes=args.input_shape,
                    quant_report=bool(getattr(args, "report", False)),
                    export_qdq=bool(getattr(args, "export_qdq", False)),
                    default_schedule=getattr(args, "default_schedule", None))
    passes, ats = getattr(args, "passes", []), getattr(args, "at", [])
    if len(passes) != len(ats):
        raise ConfigError(f"give one --at WHEN:STAGE for each --pass ({len(passes)} --pass, {len(ats)} --at)")
    for spec, at in zip(passes, ats):
        when, sep, stage = at.partition(":")
        if when not in ("before", "after") or not sep:
            raise ConfigError(f"--at '{at}': expected before:STAGE or after:STAGE")
        pipe.add_pass(load_user_pass(spec), **{when: stage})
    return pipe


def cmd_compile(args):
    qconfig, calib, evaluation = None, None, None
    if hasattr(args, "quantize"):
        from .quantize import qconfig_from_args

        qconfig, calib, evaluation = qconfig_from_args(args)
    pipe = make_pipeline(args, qconfig)
    art = pipe.run(args.model, out_dir=args.output, calib=calib, evaluation=evaluation)
    secs = art.metadata["compile_seconds"]
    print(f"compiled {args.model} for {art.target_name} -> {args.output} "
          f"(import {secs.get('import', 0):.2f}s, total {sum(v for k, v in secs.items() if ':' not in k):.2f}s)")
    for note in art.metadata.get("notes", []):
        print(f"  note: {note}")
    return 0


# ----------------------------------------------------------------------------- run

def _add_run(sub):
    p = sub.add_parser("run", help="run an artifact on inputs from an .npz file",
                       description="Run a compiled artifact. Input .npz keys are the model's input names; "
                                   "the output .npz keys are its output names. A leading dimension that is a "
                                   "multiple of the model's batch size is run batch by batch.")
    p.add_argument("artifact", metavar="OUT_DIR", help="artifact folder made by 'qcompile compile'")
    p.add_argument("--inputs", "-i", required=True, metavar="IN.npz")
    p.add_argument("--output", "-o", required=True, metavar="OUT.npz")
    p.set_defaults(func=cmd_run)


def cmd_run(args):
    from ..artifact import Artifact

    art = Artifact.load(args.artifact)
    outputs = art.run(load_npz(args.inputs))
    save_npz_atomic(args.output, outputs)
    for name, arr in outputs.items():
        print(f"{name}: {arr.dtype}{list(arr.shape)}")
    return 0


# ----------------------------------------------------------------------------- bench

def add_bench_options(p):
    p.add_argument("--inputs", "-i", metavar="IN.npz", help="inputs (default: seeded random data)")
    p.add_argument("--threads", type=int, default=1, help="TVM thread-pool size (default: 1)")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs first (default: 10)")
    p.add_argument("--repeat", type=int, default=100, help="timed runs (default: 100)")
    p.add_argument("--json", metavar="FILE", help="write the result as JSON")
    p.add_argument("--csv", metavar="FILE", help="write the result as CSV (one row per board; see 'qcompile report')")


def _add_bench(sub):
    p = sub.add_parser("bench", help="measure an artifact's latency, here or on remote boards (TVM RPC)",
                       description="Measure the latency of one inference: median, p90, p99, mean and std in ms. "
                                   "With --rpc-tracker/--rpc the artifact runs on remote boards instead.",
                       epilog="JSON keys (stable): median_ms p90_ms p99_ms mean_ms std_ms min_ms repeat warmup threads target; "
                              "remote runs add rpc_key board (and, for --boards N > 1, list results under 'boards')")
    p.add_argument("artifact", metavar="OUT_DIR")
    add_bench_options(p)
    p.add_argument("--profile", action="store_true",
                   help="also print the time per fused kernel / VM op, sorted, with its share of the total "
                        "(each kernel timed alone on the arguments of a real run; JSON key 'profile')")
    try:
        from .rpc import add_remote_bench_options
    except ModuleNotFoundError:
        pass
    else:
        add_remote_bench_options(p)
    p.set_defaults(func=cmd_bench)


def cmd_bench(args):
    from ..artifact import Artifact
    from ..runtime.bench import benchmark, format_bench

    art = Artifact.load(args.artifact)
    inputs = None
    if args.inputs:
        inputs = {k: v[: s.shape[0]] for (k, v), s in zip(load_npz(args.inputs).items(), art.inputs)}
    if hasattr(args, "rpc_tracker"):
        from .rpc import check_local_bench_args, cmd_remote_bench, is_remote

        if is_remote(args):
            if args.profile:
                from ..errors import ConfigError

                raise ConfigError("--profile runs on this machine only; drop it for remote boards")
            return cmd_remote_bench(args, art, inputs, write_json_atomic)
        check_local_bench_args(args)
    result = benchmark(art, inputs, threads=args.threads, warmup=args.warmup, repeat=args.repeat, progress=True)
    print(format_bench(result))
    if args.profile:
        from ..runtime.bench import profile
        from ..runtime.profile import PROFILE_KEY, format_profile

        prof = profile(art, inputs, threads=args.threads, warmup=min(args.warmup, 3), repeat=args.repeat,
                       total_ms=result["median_ms"], progress=True)
        print(format_profile(prof))
        result[PROFILE_KEY] = {k: v for k, v in prof.items() if k not in ("threads", "target")}
    if art.metadata.get("accelerator"):
        from .accel_report import bench_fields, format_latency, simulated_latency

        extra = bench_fields(art.metadata)
        if extra:
            print(format_latency(simulated_latency(extra["accelerator"])))
            result.update(extra)  # simulated_ms, simulated_cycles, accelerator; the stable keys are unchanged
    if args.json:
        write_json_atomic(args.json, result)
    if getattr(args, "csv", None):
        from ..report import result_rows, write_csv_atomic
        from ..runtime.rpc import model_name, precision_of

        write_csv_atomic(args.csv, result_rows(result, defaults={"model": model_name(art), "precision": precision_of(art)}))
    return 0


# ----------------------------------------------------------------------------- info / targets

def _add_info(sub):
    p = sub.add_parser("info", help="show a model's or an artifact's inputs, outputs, ops and metadata")
    p.add_argument("path", metavar="MODEL_OR_OUT_DIR")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME:DIMS")
    p.set_defaults(func=cmd_info)


def cmd_info(args):
    if os.path.isdir(args.path):
        from ..artifact import Artifact

        meta = Artifact.load(args.path).metadata
        print(f"artifact {args.path}")
        print(f"  target   {meta['target']['name']}  {json.dumps(meta['target']['tvm_target'])}")
        print(f"  model    {meta['model']['source']} ({meta['model']['format']}, sha256 {meta['model']['sha256'][:12]})")
        _print_signature(meta["inputs"], meta["outputs"])
        q = meta.get("quantization")
        print(f"  quantization {json.dumps(q) if q else 'none (fp32)'}")
        print(f"  versions {json.dumps(meta['versions'])}")
        print(f"  created  {meta['created']}")
        return 0
    from ..frontend import load

    model = load(args.path, args.input_shape)
    print(f"model {model.source} ({model.format}, sha256 {model.sha256[:12]})")
    _print_signature([t.to_json() for t in model.inputs], [t.to_json() for t in model.outputs])
    print("  relax ops:")
    for op, n in sorted(op_histogram(model.mod).items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"    {n:5d}  {op}")
    return 0


def _print_signature(inputs, outputs):
    for kind, specs in (("input ", inputs), ("output", outputs)):
        for t in specs:
            print(f"  {kind}   {t['name']}: {t['dtype']}[{'x'.join(map(str, t['shape']))}]")


def op_histogram(mod) -> dict:
    """Count Relax operator calls in every Relax function of `mod`."""
    from collections import Counter

    from tvm import relax

    counts = Counter()

    def visit(e):
        if isinstance(e, relax.Call) and isinstance(e.op, __import__("tvm").ir.Op):
            counts[e.op.name] += 1

    for _, func in mod.functions.items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return dict(counts)


def _add_targets(sub):
    p = sub.add_parser("targets", help="list the target definitions")
    p.set_defaults(func=cmd_targets)


def cmd_targets(args):
    from ..target import host_target_name, list_targets

    auto = host_target_name()
    for t in list_targets():
        mark = "  <- auto" if t.name == auto else ""
        print(f"{t.name:18s} {t.quant.activation_dtype}x{t.quant.weight_dtype}  {_runs_where(t):24s} {t.description}{mark}")
    return 0


def _runs_where(t) -> str:
    """'runs here', 'cross (aarch64)', or the CPU features this machine lacks."""
    if t.runs_here():
        return "runs here"
    if not t.runs_on_host or t.arch != cpu_features.host_arch():
        return f"cross ({t.arch})"
    missing = t.missing_cpu_flags()
    return "lacks " + ",".join(missing[:2]) + (f" +{len(missing) - 2}" if len(missing) > 2 else "")


def _add_demo(sub):
    p = sub.add_parser("demo", help="compile the bundled digits CNN and compare it with ONNX Runtime",
                       description="The main job on the bundled model: compile the digits CNN for this CPU, run its "
                                   "held-out test split, and print top-1 accuracy and latency next to ONNX Runtime's.")
    p.add_argument("--target", "-t", default="auto", help="target name or .yaml (default: auto)")
    p.add_argument("--out-dir", default="qcompile-demo", help="where the artifacts go (default: ./qcompile-demo)")
    p.add_argument("--threads", type=int, default=1, help="threads for both engines (default: 1)")
    p.add_argument("--quantize", default="int8", choices=["int8", "int16", "none"],
                   help="also compile an integer model and compare with ORT's quantize_static (default: int8)")
    p.add_argument("--repeat", type=int, default=200, help="timed runs per engine (default: 200)")
    p.add_argument("--json", metavar="FILE", help="write the table as JSON")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args):
    from .. import zoo
    from .demo import format_rows, run_demo

    quantize = None if args.quantize == "none" else args.quantize
    if quantize:
        try:
            from ..quantize import qconfig  # noqa: F401
        except ModuleNotFoundError:
            print("note: quantization is not available in this build; showing fp32 only")
            quantize = None
    rows = run_demo(args.target, args.out_dir, args.threads, quantize, args.repeat)
    print(format_rows(rows, args.threads, len(zoo.digits_test()[1])))
    if args.json:
        write_json_atomic(args.json, [{k: v for k, v in r.items() if k != "logits"} for r in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
