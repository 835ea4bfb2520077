"""Latency benchmark: model x {ORT, OpenVINO, qcompile} x {fp32, int8} x threads, batch 1.

    python benchmarks/latency.py                                   # every model at 1 and 2 threads
    python benchmarks/latency.py --models digits,squeezenet --threads 1,2 --budget 5
    python benchmarks/latency.py --models resnet50 --threads 1 --records my_db/

All engines of a model are measured in the same run, at the same thread count, interleaved in rounds
(so a change in machine load hits every engine alike), with the same harness: one ``time.perf_counter``
around one Python call of one batch-1 sample (``session.run`` for ONNX Runtime, ``vm["main"]`` for
qcompile, ``infer`` for OpenVINO). The number of timed calls per cell adapts to the cell's speed: ``--budget`` seconds per cell,
at least ``--min-repeat`` and at most ``--repeat`` calls (untuned TVM kernels on ResNet-50 take seconds a
call). Prints a table of medians and ratios, writes JSON atomically after every model and a PNG bar chart.

Engines (models, calibration data and ORT int8 from benchmarks/datasets.py and benchmarks/accuracy.py):
    ort_fp32   ONNX Runtime, CPU provider, intra_op_num_threads = threads, all graph optimizations
    ort_int8   ORT quantize_static: QDQ, per-channel, uint8 activations / int8 weights, MinMax
    ov_fp32    OpenVINO CPU plugin on the ONNX file (shapes fixed), INFERENCE_NUM_THREADS = threads,
               PERFORMANCE_HINT = LATENCY, INFERENCE_PRECISION_HINT = f32 (its default is bf16 on AMX/BF16 CPUs)
    ov_int8    the same on NNCF PTQ's int8 model: accuracy.nncf_model's nncf.quantize on the same calibration
               samples. Both OpenVINO engines are optional (the `bench` extra): "skipped" when not installed
    qc_fp32    qcompile.compile(target) with the tuning records of schedules/<target>/ (+ --records)
    qc_int8    the same with QConfig(precision="int8", calib_method=--calib-method) on the same calibration data
"""

from __future__ import annotations

import argparse
import datetime
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
from benchmarks.accuracy import (NotAvailable, _cpu, _git, _versions, captured, error_text, nncf_model,  # noqa: E402
                                 openvino_model, ort_int8_model, ov_output_name, qcompile_fp32, qcompile_int8,
                                 write_json_atomic)

MODELS = ("digits", "squeezenet", "shufflenet", "resnet50", "ppocr_det", "minilm")
ENGINES = ("ort_fp32", "ort_int8", "ov_fp32", "ov_int8", "qc_fp32", "qc_int8")
TITLES = {"ort_fp32": "ORT fp32", "ort_int8": "ORT int8", "ov_fp32": "OpenVINO fp32", "ov_int8": "OpenVINO int8",
          "qc_fp32": "qcompile fp32", "qc_int8": "qcompile int8"}
SHORT = {"ort_fp32": "ORT32", "ort_int8": "ORT8", "ov_fp32": "OV32", "ov_int8": "OV8", "qc_fp32": "qc32",
         "qc_int8": "qc8"}
# (numerator, denominator): < 1 means the numerator is faster
RATIOS = (("qc_int8", "ort_int8"), ("qc_int8", "ov_int8"), ("qc_int8", "qc_fp32"), ("qc_fp32", "ort_fp32"),
          ("qc_fp32", "ov_fp32"), ("ort_int8", "ort_fp32"), ("qc_int8", "ort_fp32"))
OV_CONFIG = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}  # + INFERENCE_NUM_THREADS per cell
DEFAULT_JSON = os.path.join(HERE, "results", "latency.json")


# ============================================================================ engines

class Engine:
    """One engine of one model: `call(threads)` returns a zero-argument function running one sample."""

    def __init__(self, name: str):
        self.name = name
        self.status = "ok"
        self.error = None
        self.build_s = None
        self.info: dict = {}

    def record(self) -> dict:
        rec = {"status": self.status, "build_s": self.build_s, **self.info}
        if self.error:
            rec["error"] = self.error
        return rec


class OrtEngine(Engine):
    def __init__(self, name, model_path, feed):
        super().__init__(name)
        self.model_path, self.feed, self.sessions = model_path, feed, {}

    def call(self, threads: int):
        from qcompile.cli.demo import ort_session

        if threads not in self.sessions:
            self.sessions[threads] = ort_session(self.model_path, threads)
        sess, feed = self.sessions[threads], self.feed
        names = [o.name for o in sess.get_outputs()]
        return lambda: dict(zip(names, sess.run(None, feed)))


class OvEngine(Engine):
    """OpenVINO's CPU plugin on one OpenVINO model, compiled once per thread count with OV_CONFIG and
    INFERENCE_NUM_THREADS = threads. A call is one ``InferRequest.infer`` (inputs shared, not copied; outputs
    come back as numpy copies, as ORT's do)."""

    def __init__(self, name, model, feed, ref_names):
        import openvino as ov

        super().__init__(name)
        self.model, self.feed, self.ref_names, self.requests = model, feed, ref_names, {}
        self.info = {"openvino": ov.__version__, "config": dict(OV_CONFIG)}

    def call(self, threads: int):
        import openvino as ov

        if threads not in self.requests:
            compiled = ov.Core().compile_model(self.model, "CPU", {**OV_CONFIG, "INFERENCE_NUM_THREADS": threads})
            self.requests[threads] = compiled.create_infer_request(), compiled.outputs
            self.info["config"] = {k: _ov_str(compiled.get_property(k)) for k in
                                   ("PERFORMANCE_HINT", "INFERENCE_PRECISION_HINT", "NUM_STREAMS",
                                    "INFERENCE_NUM_THREADS")}  # what the plugin took, at the last thread count
        request, outputs = self.requests[threads]
        names = [ov_output_name(o, i, self.ref_names) for i, o in enumerate(outputs)]
        feed = self.feed

        def run():
            res = request.infer(feed, share_inputs=True)
            return {n: res[o] for n, o in zip(names, outputs)}
        return run


def _ov_str(value) -> str:
    return value.to_string() if hasattr(value, "to_string") else str(value)  # ov.Type: "f32"


class QcEngine(Engine):
    def __init__(self, name, art, feed, ref_names):
        import tvm

        super().__init__(name)
        self.art = art
        self.args = [tvm.runtime.tensor(np.ascontiguousarray(feed[s.name])) for s in art.inputs]
        names = art.output_names  # ONNX names where qcompile had to number them (see accuracy.artifact_runner)
        self.names = (ref_names if not set(ref_names) & set(names) and len(names) == len(ref_names) else names)
        self.info = {"target": art.target_name, "stage_seconds": art.metadata.get("compile_seconds"),
                     "notes": art.metadata.get("notes", [])}

    def call(self, threads: int):
        """TVM's thread pool is global: it is set here, and every qcompile function of one thread count
        is made before that count's cells run. Outputs come back as numpy arrays, as ORT's do (zero-copy
        views through DLPack: ``Tensor.numpy()`` copies through the FFI and costs ~20 us a call here)."""
        from qcompile.io import flatten_tensors as _flatten
        from qcompile.runtime.bench import set_threads

        set_threads(threads)
        main, args, names = self.art.vm["main"], self.args, self.names
        return lambda: dict(zip(names, (np.from_dlpack(t) for t in _flatten(main(*args)))))


def build_engines(ds, args, work: str, log_path: str | None) -> dict:
    feed = {k: np.ascontiguousarray(v[:1]) for k, v in ds.inputs.items()}
    import onnx

    ref_names = [o.name for o in onnx.load(ds.model, load_external_data=False).graph.output]
    engines = {}
    for name in args.engines:
        t0 = time.perf_counter()
        try:
            with captured(log_path):
                if name == "ort_fp32":
                    eng = OrtEngine(name, ds.model, feed)
                elif name == "ort_int8":
                    path = ort_int8_model(ds.model, ds.calib, os.path.join(work, f"{ds.name}_ort_int8.onnx"))
                    eng = OrtEngine(name, path, feed)
                    eng.info = {"quantization": "quantize_static QDQ per-channel u8/s8 MinMax"}
                elif name == "ov_fp32":
                    eng = OvEngine(name, openvino_model(ds), feed, ref_names)
                elif name == "ov_int8":
                    model, settings = nncf_model(ds)
                    eng = OvEngine(name, model, feed, ref_names)
                    eng.info["quantization"] = {"nncf.quantize": settings}
                elif name == "qc_fp32":
                    eng = QcEngine(name, qcompile_fp32(ds, args.target, args.records), feed, ref_names)
                else:
                    eng = QcEngine(name, qcompile_int8(ds, args.target, args.calib_method, args.records), feed,
                                   ref_names)
                    eng.info["calib_method"] = args.calib_method
                    eng.info["quantization"] = eng.art.metadata.get("quantization")
                eng.call(args.threads[0])  # ORT session / VM created here, not in the first timed cell
        except NotAvailable as err:  # an optional engine whose packages are not installed
            eng = Engine(name)
            eng.status, eng.error = "skipped", str(err)
        except Exception as err:  # noqa: BLE001 - one engine failing must not stop the benchmark
            if log_path:
                with open(log_path, "a") as f:
                    f.write(f"\n---- {ds.name} {name} failed\n{traceback.format_exc()}\n")
            eng = Engine(name)
            eng.status, eng.error = "n/a", error_text(err)
        eng.build_s = round(time.perf_counter() - t0, 2)
        engines[name] = eng
    return engines


# ============================================================================ measuring

def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def plan_cell(fn, args) -> tuple[int, int, float, dict]:
    """(warmup, repeat, seconds of one call, outputs): one untimed call (its outputs are kept), then one
    timed call sizes the cell and is its first sample. More warmup calls only when they fit in a tenth
    of the budget (a slow cell is warm after its first call)."""
    outs = {k: np.array(v, copy=True) for k, v in fn().items()}
    one = max(_timed(fn), 1e-7)
    repeat = int(min(args.repeat, max(args.min_repeat, args.budget // one)))
    warmup = int(min(args.warmup, (0.1 * args.budget) // one))
    return warmup, repeat, one, outs


def measure_model(name: str, engines: dict, args, bar) -> tuple[dict, dict]:
    """Interleaved rounds at each thread count. Returns ({threads: {engine: stats}}, {engine: outputs})."""
    from qcompile.runtime.bench import stats_ms

    cells: dict = {}
    outputs: dict = {}
    live = [e for e in engines.values() if e.status == "ok"]
    for threads in args.threads:
        fns, plans, samples, load = {}, {}, {}, {}
        for e in live:
            bar.set_postfix_str(f"{name} {threads}t {e.name}: sizing")
            try:
                fns[e.name] = e.call(threads)
                plans[e.name] = plan_cell(fns[e.name], args)
                outputs.setdefault(e.name, plans[e.name][3])
            except Exception as err:  # noqa: BLE001
                e.status, e.error = "n/a", error_text(err)
                fns.pop(e.name, None)
                continue
            samples[e.name] = [plans[e.name][2]]  # the sizing call was warm (a call ran before it): it counts
            load[e.name] = [os.getloadavg()[0]]
        rounds = max(1, min(args.rounds, min((p[1] - 1 for p in plans.values()), default=1)))
        for r in range(rounds):
            order = list(fns) if r % 2 == 0 else list(fns)[::-1]  # alternate so no engine always follows another
            for en in order:
                fn, (warmup, repeat, _, _) = fns[en], plans[en]
                bar.set_postfix_str(f"{name} {threads}t {TITLES[en]} round {r + 1}/{rounds}")
                if r == 0:
                    for _ in range(warmup):
                        fn()
                n = (repeat - 1) // rounds + (1 if r < (repeat - 1) % rounds else 0)
                samples[en].extend(_timed(fn) for _ in range(n))
                load[en].append(os.getloadavg()[0])
                bar.update(1)
                time.sleep(0.02)  # let the other engine's spinning worker threads go idle
        cells[str(threads)] = {}
        for en in fns:
            st = stats_ms(samples[en])
            st.update({"repeat": len(samples[en]), "warmup": plans[en][0], "rounds": rounds, "threads": threads,
                       "loadavg_1min": [round(v, 2) for v in load[en]]})
            cells[str(threads)][en] = st
        bar.update(len(live) * args.rounds - len(fns) * rounds)  # cells skipped or with fewer rounds
    return cells, outputs


def ratios(cells: dict) -> dict:
    out = {}
    for threads, c in cells.items():
        out[threads] = {f"{a}/{b}": c[a]["median_ms"] / c[b]["median_ms"] for a, b in RATIOS if a in c and b in c}
    return out


def run_model(name: str, args, work: str, log_path: str | None, bar) -> dict:
    from tqdm import tqdm

    t0 = time.perf_counter()
    try:
        with captured(log_path):
            ds = datasets.load(name, 1, args.calib, work)
    except datasets.ModelNotFound as err:
        return {"status": "missing", "error": str(err)}
    except Exception as err:  # noqa: BLE001
        if log_path:
            with open(log_path, "a") as f:
                f.write(f"\n---- {name} dataset failed\n{traceback.format_exc()}\n")
        return {"status": "error", "error": error_text(err)}
    entry = {"status": "ok", "model": ds.model, "input_shapes": ds.input_shapes,
             "inputs": {k: list(v.shape[1:]) for k, v in ds.inputs.items()}, "n_calib": ds.n_calib, "notes": ds.notes}
    bar.set_postfix_str(f"{name}: building")
    engines = build_engines(ds, args, work, log_path)
    for e in engines.values():
        tqdm.write(f"[{name}] {TITLES[e.name]}: " + (f"built in {e.build_s:.1f}s" if e.status == "ok" else
                                                    f"{e.status} ({e.error})"))
    cells, outs = measure_model(name, engines, args, bar)
    entry["engines"] = {n: e.record() for n, e in engines.items()}
    entry["cells"] = cells
    entry["ratios"] = ratios(cells)
    ref = outs.get("ort_fp32")
    if ref is not None:  # the outputs on the timed sample agree with ORT fp32 (a fast wrong kernel would show here)
        entry["agreement_vs_ort_fp32"] = {}
        for en, o in outs.items():
            m = ds.score(o, ref)
            if ds.output in o and ds.output in ref:
                m["max_abs_diff"] = float(np.abs(o[ds.output].astype(np.float64) - ref[ds.output]).max())
            entry["agreement_vs_ort_fp32"][en] = m
    entry["seconds"] = round(time.perf_counter() - t0, 1)
    for threads in cells:
        tqdm.write(f"[{name}] {threads} thread(s): " + ", ".join(
            f"{TITLES[en]} {c['median_ms']:.4g} ms" for en, c in cells[threads].items()))
    return entry


# ============================================================================ reporting

def _ms(c: dict | None) -> str:
    if c is None:
        return "n/a"
    v = c["median_ms"]
    return f"{v:.4f}" if v < 1 else f"{v:.2f}" if v < 1000 else f"{v:.0f}"


def format_table(results: dict) -> str:
    engines = [e for e in ENGINES if e in results["args"]["engines"]]
    rat = [f"{a}/{b}" for a, b in RATIOS if a in engines and b in engines]
    rtitles = [f"{SHORT[r.split('/')[0]]}/{SHORT[r.split('/')[1]]}" for r in rat]
    lines = ["median ms per batch-1 call (same run, same threads, interleaved); ratio < 1: the first is faster",
             f"{'model':11s} {'thr':>3s} " + " ".join(f"{TITLES[e]:>13s}" for e in engines) + "  "
             + " ".join(f"{t:>10s}" for t in rtitles)]
    for name, e in results["models"].items():
        if e["status"] != "ok":
            lines.append(f"{name:11s} {e['status']}: {e['error']}")
            continue
        for threads, c in e["cells"].items():
            r = e["ratios"][threads]
            lines.append(f"{name:11s} {threads:>3s} " + " ".join(f"{_ms(c.get(en)):>13s}" for en in engines) + "  "
                         + " ".join(f"{(f'{r[k]:.2f}' if k in r else '-'):>10s}" for k in rat))
        bad = {n: rec["error"] for n, rec in e["engines"].items() if rec["status"] != "ok"}
        for n, err in bad.items():
            lines.append(f"{'':15s} {TITLES[n]}: {e['engines'][n]['status']} ({err})")
    return "\n".join(lines)


def plot(results: dict, path: str) -> bool:
    """Grouped bars: one group per (model, threads), one bar per engine, median ms on a log axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    groups = [(f"{n}\n{t} thr", c) for n, e in results["models"].items() if e["status"] == "ok"
              for t, c in e["cells"].items()]
    engines = [e for e in ENGINES if e in results["args"]["engines"]]
    if not groups:
        return False
    colors = {"ort_fp32": "#8c8c8c", "ort_int8": "#dd8452", "ov_fp32": "#b8a9d9", "ov_int8": "#8172b3",
              "qc_fp32": "#4c72b0", "qc_int8": "#55a868"}
    fig, ax = plt.subplots(figsize=(max(7.0, 1.3 * len(groups)), 4.8))
    width = 0.8 / len(engines)
    lo = min(c[en]["median_ms"] for _, c in groups for en in c)
    hi = max(c[en]["median_ms"] for _, c in groups for en in c)
    for j, en in enumerate(engines):
        for i, (_, c) in enumerate(groups):
            x = i + (j - (len(engines) - 1) / 2) * width
            if en not in c:
                ax.text(x, lo / 2, "n/a", rotation=90, ha="center", va="bottom", fontsize=7, color="0.4")
                continue
            v = c[en]["median_ms"]
            ax.bar(x, v, width, color=colors[en])
            ax.text(x, v * 1.08, f"{v:.3g}", rotation=90, ha="center", va="bottom", fontsize=6.5)
    ax.set_yscale("log")
    ax.set_ylim(lo / 3, hi * 8)
    ax.set_xlim(-0.5, len(groups) - 0.5)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([g for g, _ in groups], fontsize=8)
    ax.set_ylabel("median latency per call, ms (log)")
    m = results["machine"]
    ax.set_title(f"qcompile latency benchmark, batch 1: {m['cpu']} ({m['cores']} cores, {m['isa']}), "
                 f"target {','.join(results['targets']) or results['args']['target']}", fontsize=9)
    ax.legend(handles=[Patch(color=colors[e], label=TITLES[e]) for e in engines], fontsize=8, ncol=len(engines),
              loc="upper left")
    ax.grid(axis="y", alpha=0.3, which="both")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return True


def _isa() -> str:
    from qcompile.cpu_features import host_cpu_flags

    flags = host_cpu_flags() or set()
    if "amx_int8" in flags:
        return "AVX-512 VNNI + AMX"
    if "avx512_vnni" in flags:
        return "AVX-512 VNNI"
    if "avx_vnni" in flags:
        return "AVX2 + AVX-VNNI"
    return "AVX2, no VNNI" if "avx2" in flags else "no AVX2"


# ============================================================================ CLI

def parse_args(argv=None):
    try:
        from qcompile.quantize.qconfig import CALIB_METHODS
    except ImportError:
        CALIB_METHODS = ("minmax", "moving_average", "percentile", "entropy", "mse")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)} (default: all)")
    p.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated subset of {','.join(ENGINES)}")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default: 1,2)")
    p.add_argument("--repeat", type=int, default=2000, help="at most this many timed calls per cell (default: 2000)")
    p.add_argument("--min-repeat", type=int, default=3, help="at least this many timed calls per cell (default: 3)")
    p.add_argument("--budget", type=float, default=5.0,
                   help="seconds of timed calls per cell; sets the repeat count between the two bounds (default: 5)")
    p.add_argument("--warmup", type=int, default=10, help="at most this many untimed calls per cell (default: 10)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the engines per thread count (default: 3)")
    p.add_argument("--calib", type=int, default=8, help="calibration samples for both int8 engines (default: 8)")
    p.add_argument("--calib-method", default="minmax", choices=CALIB_METHODS, help="qcompile int8 calibration (default: "
                   "minmax, the same as ORT's)")
    p.add_argument("--target", default="auto", help="qcompile target (default: auto)")
    p.add_argument("--records", action="append", default=[], metavar="DIR",
                   help="extra tuning-record folders for qcompile (schedules/<target>/ applies anyway); repeatable")
    p.add_argument("--json", default=DEFAULT_JSON, help="results file (default: benchmarks/results/latency.json)")
    p.add_argument("--png", default=None, help="bar chart (default: the --json path with .png)")
    p.add_argument("--no-png", action="store_true", help="do not draw the chart")
    p.add_argument("--work-dir", default=None, help="keep intermediate models and the build log here (default: a temp dir)")
    p.add_argument("--verbose", action="store_true", help="show TVM/ORT build output instead of logging it")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    try:
        args.threads = [int(t) for t in args.threads.split(",") if t.strip()]
    except ValueError:
        p.error(f"--threads takes comma-separated integers, got '{args.threads}'")
    for m in args.models:
        if m not in MODELS:
            p.error(f"unknown model '{m}'; choose from {', '.join(MODELS)}")
    for e in args.engines:
        if e not in ENGINES:
            p.error(f"unknown engine '{e}'; choose from {', '.join(ENGINES)}")
    if not args.threads or min(args.threads) < 1:
        p.error("--threads must be positive integers")
    if args.min_repeat < 1 or args.repeat < args.min_repeat or args.rounds < 1 or args.budget <= 0 or args.calib < 1:
        p.error("need 1 <= --min-repeat <= --repeat, --rounds >= 1, --budget > 0, --calib >= 1")
    if args.png is None:
        args.png = os.path.splitext(args.json)[0] + ".png"
    return args


def main(argv=None) -> int:
    from tqdm import tqdm

    args = parse_args(argv)
    work = args.work_dir or tempfile.mkdtemp(prefix="qcompile-latency-")
    os.makedirs(work, exist_ok=True)
    log_path = None if args.verbose else os.path.join(work, "latency.log")
    results = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/latency.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "args": dict(vars(args)),
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "isa": _isa(), "platform": platform.platform(),
                    "loadavg_start": list(os.getloadavg())},
        "method": "one time.perf_counter around one Python call of one batch-1 sample, every engine; engines "
                  "interleaved in rounds at each thread count; repeats sized by --budget per cell",
        "versions": _versions(),
        "git": _git(),
        "targets": [],
        "models": {},
    }
    t0 = time.perf_counter()
    bar = tqdm(total=len(args.models) * len(args.threads) * len(args.engines) * args.rounds, unit="chunk",
               desc="latency", dynamic_ncols=True, mininterval=0.5)
    try:
        for name in args.models:
            results["models"][name] = run_model(name, args, work, log_path, bar)
            targets = {r.get("target") for e in results["models"].values() for r in e.get("engines", {}).values()}
            results["targets"] = sorted(t for t in targets if t)
            results["total_s"] = round(time.perf_counter() - t0, 1)
            results["machine"]["loadavg_end"] = list(os.getloadavg())
            write_json_atomic(results, args.json)
    finally:
        bar.close()
        if log_path and os.path.exists(log_path):
            shutil.copyfile(log_path, os.path.splitext(args.json)[0] + ".log")
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    print(format_table(results))
    drawn = not args.no_png and plot(results, args.png)
    la = results["machine"]
    print(f"\nload average (1/5/15 min) at start {'/'.join(f'{v:.1f}' for v in la['loadavg_start'])}, at end "
          f"{'/'.join(f'{v:.1f}' for v in la['loadavg_end'])} on {la['cores']} cores")
    print(f"wrote {args.json}" + (f" and {args.png}" if drawn else "") + f"; total {results['total_s']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
