"""Accuracy benchmark: model x {qcompile fp32, ORT fp32, ORT int8 (QDQ), qcompile int8, qcompile mixed}.

    python benchmarks/accuracy.py                                  # every model, every column
    python benchmarks/accuracy.py --models digits,ppocr_rec --samples 50 --calib 32
    python benchmarks/accuracy.py --columns qc_fp32,ort_fp32,ort_int8

Prints a summary table (each model's primary metric) and a detail table (every metric, max |diff|
vs ORT fp32, compile and eval seconds), writes JSON atomically (after every model, so an interrupted
run keeps what it finished) and a PNG bar chart of the primary metrics. A column that cannot run
(e.g. quantization not implemented yet) is "n/a" with its error; a model that is not installed is
reported as missing. Models, data and metrics: benchmarks/datasets.py; more in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(HERE))

from benchmarks import datasets  # noqa: E402

COLUMNS = ("qc_fp32", "ort_fp32", "ort_int8", "qc_int8", "qc_mixed")
TITLES = {"qc_fp32": "qcompile fp32", "ort_fp32": "ORT fp32", "ort_int8": "ORT int8",
          "qc_int8": "qcompile int8", "qc_mixed": "qcompile mixed"}
# ORT fp32 is the reference the other columns are scored against, so it runs first.
RUN_ORDER = ("ort_fp32", "qc_fp32", "ort_int8", "qc_int8", "qc_mixed")
METRIC_TITLES = {"top1": "top-1", "acc": "accuracy", "exact": "exact match", "cer": "CER",
                 "agree": ">0.5 agreement", "cos_mean": "mean cosine"}
DEFAULT_JSON = os.path.join(HERE, "results", "accuracy.json")


class NotAvailable(RuntimeError):
    """A column that cannot run in this build (reported as n/a, not as a failure)."""


# ============================================================================ the columns

def qcompile_fp32(ds, target, records=()):
    """records: extra tuning-record folders (schedules/<target>/ applies anyway)."""
    import qcompile

    return qcompile.compile(ds.model, target=target, input_shapes=ds.input_shapes, records=records)


def qcompile_int8(ds, target, calib_method, records=()):
    import qcompile
    from qcompile.quantize.qconfig import QConfig

    qconfig = QConfig(precision="int8", calib_method=calib_method)
    return qcompile.compile(ds.model, target=target, qconfig=qconfig, calib=ds.calib, input_shapes=ds.input_shapes,
                            records=records)


def qcompile_mixed(ds, target, calib_method):
    """Mixed precision under an accuracy budget: layers fall back (int16 / fp32) until the output
    keeps cosine >= 0.99 with fp32 on the calibration data. Adapt here when the API lands."""
    import qcompile
    from qcompile.quantize.qconfig import QConfig

    try:
        qconfig = QConfig(precision="int8", calib_method=calib_method, budget={"metric": "cosine", "min": 0.99})
    except TypeError as err:
        raise NotAvailable(f"QConfig has no accuracy budget yet ({err})") from None
    return qcompile.compile(ds.model, target=target, qconfig=qconfig, calib=ds.calib, input_shapes=ds.input_shapes)


def ort_int8_model(model_path: str, calib: dict, out_path: str, method: str = "minmax", preprocess: bool = False) -> str:
    """ONNX Runtime quantize_static: QDQ, per-channel weights, uint8 activations / int8 weights.
    preprocess: run ORT's quant_pre_process (shape inference, graph optimization: folds BN into conv) first."""
    from qcompile.cli.demo import ort_int8_model as demo_int8

    if preprocess:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        pre = os.path.splitext(out_path)[0] + "_pre.onnx"
        try:
            quant_pre_process(model_path, pre)
        except Exception:  # noqa: BLE001 - symbolic shape inference gives up on some dynamic graphs
            quant_pre_process(model_path, pre, skip_symbolic_shape=True)
        model_path = pre
    return demo_int8(model_path, calib, out_path, method)


# ============================================================================ running

def run_samples(fn, inputs: dict, desc: str) -> tuple[dict, float]:
    """Call fn({name: array[1, ...]}) -> {output: array[1, ...]} on every sample; stack the outputs.
    Also returns the seconds of the first call (loading the library / creating the VM)."""
    from tqdm import tqdm

    n = len(next(iter(inputs.values())))
    outs: dict[str, list] = {}
    first = 0.0
    for i in tqdm(range(n), desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0):
        t = time.perf_counter()
        for k, v in fn({k: a[i:i + 1] for k, a in inputs.items()}).items():
            outs.setdefault(k, []).append(np.asarray(v))
        if i == 0:
            first = time.perf_counter() - t
    return {k: np.concatenate(v, axis=0) for k, v in outs.items()}, first


def ort_runner(model_path: str, threads: int):
    from qcompile.cli.demo import ort_session

    sess = ort_session(model_path, threads)
    names = [o.name for o in sess.get_outputs()]
    return lambda feed: dict(zip(names, sess.run(None, feed)))


def artifact_runner(art, ref_names: list[str]):
    """art.run, with outputs renamed to the ONNX names if qcompile had to number them."""
    names = art.output_names
    rename = dict(zip(names, ref_names)) if not set(ref_names) & set(names) and len(names) == len(ref_names) else {}
    return lambda feed: {rename.get(k, k): v for k, v in art.run(feed).items()}


@contextlib.contextmanager
def captured(log_path: str | None):
    """Send fd 1/2 (TVM's C++ warnings, onnxslim retries, ORT logs) to a log file for the duration."""
    if log_path is None:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def error_text(err: BaseException) -> str:
    """One line: qcompile's errors are one line already, TVM's end with the message; plus where in
    qcompile it was raised (the full traceback is in the log)."""
    from qcompile.errors import QCompileError

    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    text = (lines[0] if isinstance(err, QCompileError) else lines[-1]) if lines else ""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if f"{os.sep}qcompile{os.sep}" in f.filename]
    where = ""
    if frames and not isinstance(err, QCompileError):
        f = frames[-1]
        where = f" [in qcompile/{f.filename.rsplit(os.sep + 'qcompile' + os.sep, 1)[-1]}:{f.lineno} {f.name}]"
    return f"{type(err).__name__}: {text}"[:400] + where


def run_column(col: str, ds, ref: dict | None, args, work: str, log_path: str | None) -> tuple[dict, dict | None]:
    """Build and evaluate one column. Returns (record, outputs or None)."""
    rec: dict = {"status": "ok"}
    try:
        t0 = time.perf_counter()
        with captured(log_path):
            if col == "ort_fp32":
                fn = ort_runner(ds.model, args.threads)
            elif col == "ort_int8":
                q = ort_int8_model(ds.model, ds.calib, os.path.join(work, f"{ds.name}_ort_int8.onnx"),
                                   args.ort_calib_method, args.ort_preprocess)
                fn = ort_runner(q, args.threads)
                rec["calib_method"] = args.ort_calib_method
                rec["preprocess"] = args.ort_preprocess
            else:
                build = {"qc_fp32": lambda: qcompile_fp32(ds, args.target),
                         "qc_int8": lambda: qcompile_int8(ds, args.target, args.calib_method),
                         "qc_mixed": lambda: qcompile_mixed(ds, args.target, args.calib_method)}[col]
                art = build()
                fn = artifact_runner(art, list(ref) if ref else [])
                rec["target"] = art.target_name
                rec["stage_seconds"] = art.metadata.get("compile_seconds")
                rec["frontend_simplified"] = art.metadata.get("model", {}).get("meta", {}).get("simplified")
                if col != "qc_fp32":
                    rec["calib_method"] = args.calib_method
                    rec["quantization"] = art.metadata.get("quantization")
        rec["compile_s"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        outs, first = run_samples(fn, ds.inputs, f"{ds.name} {TITLES[col]}")
        rec["eval_s"] = round(time.perf_counter() - t0, 3)
        rec["first_call_s"] = round(first, 3)
        # steady state: without the first call (library load / VM creation); includes art.run's checks
        rec["ms_per_sample"] = round(1e3 * (rec["eval_s"] - first) / max(1, ds.n_eval - 1), 3)
    except NotAvailable as err:
        return {"status": "n/a", "error": str(err)}, None
    except Exception as err:  # noqa: BLE001 - one column failing must not stop the benchmark
        if log_path:
            with open(log_path, "a") as f:
                f.write(f"\n---- {ds.name} {col} failed\n{traceback.format_exc()}\n")
        return {"status": "n/a", "error": error_text(err)}, None
    if ref is not None:
        rec["metrics"] = ds.score(outs, ref)
        if ds.output in outs and ds.output in ref:
            rec["max_abs_diff_vs_ort_fp32"] = float(np.abs(outs[ds.output].astype(np.float64) - ref[ds.output]).max())
        if col == "qc_fp32":
            rec["max_abs_diff_all_outputs"] = {k: float(np.abs(outs[k].astype(np.float64) - ref[k]).max())
                                               for k in outs if k in ref and outs[k].shape == ref[k].shape}
    else:
        rec["metrics"] = {}
        rec["note"] = "no ORT fp32 reference to score against"
    return rec, outs


def run_model(name: str, args, work: str, log_path: str | None) -> dict:
    from tqdm import tqdm

    entry: dict = {"columns": {}}
    t0 = time.perf_counter()
    try:
        with captured(log_path):
            ds = datasets.load(name, args.samples, args.calib, work)
    except datasets.ModelNotFound as err:
        return {"status": "missing", "error": str(err), "columns": {}}
    except Exception as err:  # noqa: BLE001
        if log_path:
            with open(log_path, "a") as f:
                f.write(f"\n---- {name} dataset failed\n{traceback.format_exc()}\n")
        return {"status": "error", "error": error_text(err), "columns": {}}
    entry.update({"status": "ok", "model": ds.model, "input_shapes": ds.input_shapes, "n_eval": ds.n_eval,
                  "n_calib": ds.n_calib, "primary": ds.primary, "metrics": list(ds.metric_names), "output": ds.output,
                  "notes": ds.notes, "dataset_s": round(time.perf_counter() - t0, 3)})
    ref = None
    for col in RUN_ORDER:
        if col not in args.columns:
            continue
        tqdm.write(f"[{name}] {TITLES[col]} ...")
        rec, outs = run_column(col, ds, ref, args, work, log_path)
        if col == "ort_fp32" and outs is not None:
            ref = outs
            rec["metrics"] = ds.score(ref, ref)
            rec["max_abs_diff_vs_ort_fp32"] = 0.0
            rec.pop("note", None)
        entry["columns"][col] = rec
        tqdm.write(f"[{name}] {TITLES[col]}: " + (_short(rec, ds.primary) if rec["status"] == "ok" else f"n/a ({rec['error']})"))
    return entry


def _short(rec: dict, primary: str) -> str:
    m = rec.get("metrics", {})
    parts = [f"{primary}={fmt_metric(primary, m.get(primary))}"]
    if "max_abs_diff_vs_ort_fp32" in rec:
        parts.append(f"max|diff|={rec['max_abs_diff_vs_ort_fp32']:.2e}")
    parts.append(f"compile {rec['compile_s']:.1f}s, eval {rec['eval_s']:.1f}s")
    return ", ".join(parts)


# ============================================================================ reporting

def fmt_metric(name: str, v) -> str:
    if v is None:
        return "-"
    if isinstance(v, list):
        return "; ".join(v)
    if name.startswith("cos"):
        return f"{v:.4f}"
    if "dp" in name:
        return f"{v:.2e}"
    return f"{100 * v:.2f}%"


def _cell(entry: dict, col: str, metric: str) -> str:
    rec = entry["columns"].get(col)
    if rec is None:
        return "-"
    if rec["status"] != "ok":
        return "n/a"
    return fmt_metric(metric, rec.get("metrics", {}).get(metric))


def format_tables(results: dict) -> str:
    cols = [c for c in COLUMNS if c in results["args"]["columns"]]
    w = 15
    lines = ["", "Summary: each model's primary metric (higher is better)",
             f"{'model':10s} {'metric':15s} " + " ".join(f"{TITLES[c]:>{w}s}" for c in cols)]
    for name, e in results["models"].items():
        if e["status"] != "ok":
            lines.append(f"{name:10s} {e['status']}: {e['error']}")
            continue
        lines.append(f"{name:10s} {METRIC_TITLES.get(e['primary'], e['primary']):15s} "
                     + " ".join(f"{_cell(e, c, e['primary']):>{w}s}" for c in cols))
    lines += ["", "Details",
              f"{'model':10s} {'column':15s} {'metrics':54s} {'max|diff| ORT':>13s} {'compile s':>9s} {'1st call s':>10s} "
              f"{'eval s':>8s} {'ms/sample':>9s}"]
    for name, e in results["models"].items():
        if e["status"] != "ok":
            continue
        lines.append(f"{name:10s} ({e['n_eval']} eval / {e['n_calib']} calib samples" + "".join(f"; {n}" for n in e["notes"]) + ")")
        for c in cols:
            rec = e["columns"].get(c)
            if rec is None:
                continue
            if rec["status"] != "ok":
                lines.append(f"{'':10s} {TITLES[c]:15s} n/a: {rec['error']}")
                continue
            m = rec.get("metrics", {})
            metrics = " ".join(f"{k}={fmt_metric(k, m.get(k))}" for k in e["metrics"])
            diff = rec.get("max_abs_diff_vs_ort_fp32")
            lines.append(f"{'':10s} {TITLES[c]:15s} {metrics:54s} {(f'{diff:.2e}' if diff is not None else '-'):>13s} "
                         f"{rec['compile_s']:9.1f} {rec['first_call_s']:10.2f} {rec['eval_s']:8.1f} {rec['ms_per_sample']:9.2f}")
            if m.get("examples"):
                lines.append(f"{'':27s} misread: {fmt_metric('examples', m['examples'])}")
    return "\n".join(lines)


def write_json_atomic(data: dict, path: str):
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, default=_json_default)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _json_default(o):
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    return str(o)


def plot(results: dict, path: str):
    """Grouped bars: one group per model, one bar per column, the model's primary metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    models = [(n, e) for n, e in results["models"].items() if e["status"] == "ok"]
    cols = [c for c in COLUMNS if c in results["args"]["columns"]]
    if not models:
        return False
    fig, ax = plt.subplots(figsize=(max(6.0, 2.2 * len(models)), 4.2))
    width = 0.8 / len(cols)
    colors = {"qc_fp32": "#4c72b0", "ort_fp32": "#8c8c8c", "ort_int8": "#dd8452", "qc_int8": "#55a868", "qc_mixed": "#8172b3"}
    for j, c in enumerate(cols):
        for i, (_, e) in enumerate(models):
            x = i + (j - (len(cols) - 1) / 2) * width
            rec = e["columns"].get(c)
            v = rec.get("metrics", {}).get(e["primary"]) if rec and rec["status"] == "ok" else None
            if v is None:
                ax.text(x, 0.02, "n/a", rotation=90, ha="center", va="bottom", fontsize=7, color="0.4")
                continue
            ax.bar(x, v, width, color=colors[c])
            ax.text(x, v + 0.01, f"{v:.3f}" if e["primary"].startswith("cos") else f"{100 * v:.1f}",
                    rotation=90, ha="center", va="bottom", fontsize=7)
    ax.set_xlim(-0.5, len(models) - 0.5)
    ax.set_xticks(range(len(models)))
    ax.set_xticklabels([f"{n}\n{METRIC_TITLES.get(e['primary'], e['primary'])}" for n, e in models])
    ax.set_ylim(0, 1.25)
    ax.set_ylabel("primary metric (1 = best)")
    targets = sorted({r["target"] for _, e in models for r in e["columns"].values() if r.get("target")})
    ax.set_title(f"qcompile accuracy benchmark: {results['machine']['cpu']}, target {','.join(targets) or results['args']['target']}",
                 fontsize=9)
    ax.legend(handles=[Patch(color=colors[c], label=TITLES[c]) for c in cols], fontsize=8, ncol=len(cols),
              loc="upper center")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return True


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("qcompile", "apache-tvm", "onnxruntime", "onnx", "onnxslim", "numpy", "rapidocr-onnxruntime", "silero-vad"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def _git() -> dict:
    """The commit measured, and the files that differed from it: modified tracked files, and untracked
    Python files (a shared checkout may hold work in progress that the measurement ran with)."""
    import subprocess

    root = os.path.dirname(HERE)
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        status = subprocess.run(["git", "-C", root, "status", "--porcelain"], capture_output=True,
                                text=True).stdout.splitlines()
    except OSError:
        return {}
    return {"commit": head, "modified": [ln[3:] for ln in status if ln.strip() and not ln.startswith("??")],
            "untracked_py": [ln[3:] for ln in status if ln.startswith("??") and ln.endswith(".py")]}


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ============================================================================ CLI

def parse_args(argv=None):
    from qcompile.quantize.qconfig import CALIB_METHODS, QConfig
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(datasets.MODELS),
                   help=f"comma-separated subset of {','.join(datasets.MODELS)} (default: all)")
    p.add_argument("--columns", default=",".join(COLUMNS), help=f"comma-separated subset of {','.join(COLUMNS)}")
    p.add_argument("--samples", type=int, default=None,
                   help="eval samples per model (default: digits 360, ppocr_cls 200, ppocr_rec 100, silero 300 chunks, "
                        "minilm 50 sentences)")
    p.add_argument("--calib", type=int, default=None,
                   help="calibration samples per model (default: digits 200, silero 64, others 32)")
    p.add_argument("--calib-method", default=QConfig.calib_method, choices=CALIB_METHODS,
                   help="qcompile int8 calibration (default: qcompile's own default, %(default)s)")
    p.add_argument("--ort-calib-method", default="minmax", choices=("minmax", "entropy", "percentile", "distribution"),
                   help="ORT quantize_static calibration (default: minmax, ORT's default). Note: through quantize_static, "
                        "ORT's entropy uses 128 bins / 128 quantized bins, which reduces to minmax")
    p.add_argument("--ort-preprocess", action="store_true",
                   help="run ORT's quant_pre_process (shape inference + optimization) before quantize_static")
    p.add_argument("--target", default="auto", help="qcompile target (default: auto)")
    p.add_argument("--threads", type=int, default=1, help="ORT intra-op threads")
    p.add_argument("--json", default=DEFAULT_JSON, help="results file (default: benchmarks/results/accuracy.json)")
    p.add_argument("--png", default=None, help="bar chart (default: the --json path with .png)")
    p.add_argument("--no-png", action="store_true", help="do not draw the chart")
    p.add_argument("--work-dir", default=None, help="keep intermediate models and the compile log here (default: a temp dir)")
    p.add_argument("--verbose", action="store_true", help="show TVM/ORT output instead of logging it")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.columns = [c.strip() for c in args.columns.split(",") if c.strip()]
    for m in args.models:
        if m not in datasets.MODELS:
            p.error(f"unknown model '{m}'; choose from {', '.join(datasets.MODELS)}")
    for c in args.columns:
        if c not in COLUMNS:
            p.error(f"unknown column '{c}'; choose from {', '.join(COLUMNS)}")
    for key in ("samples", "calib"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            p.error(f"--{key} must be positive")
    if args.png is None:
        args.png = os.path.splitext(args.json)[0] + ".png"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    work = args.work_dir or tempfile.mkdtemp(prefix="qcompile-accuracy-")
    os.makedirs(work, exist_ok=True)
    log_path = None if args.verbose else os.path.join(work, "accuracy.log")
    results = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "args": {k: v for k, v in vars(args).items()},
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "platform": platform.platform()},
        "versions": _versions(),
        "models": {},
    }
    t0 = time.perf_counter()
    try:
        for name in args.models:
            results["models"][name] = run_model(name, args, work, log_path)
            results["total_s"] = round(time.perf_counter() - t0, 1)
            write_json_atomic(results, args.json)
    finally:
        if log_path and os.path.exists(log_path):
            shutil.copyfile(log_path, os.path.splitext(args.json)[0] + ".log")
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    print(format_tables(results))
    drawn = not args.no_png and plot(results, args.png)
    print(f"\nwrote {args.json}" + (f" and {args.png}" if drawn else "")
          + (f"; TVM/ORT output in {os.path.splitext(args.json)[0]}.log" if log_path else "")
          + f"; total {results['total_s']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
