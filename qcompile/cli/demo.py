"""The main job on the bundled model: compile the digits CNN for this CPU, then compare
top-1 accuracy and latency with ONNX Runtime (fp32, and int8 when quantization is asked for).

    qcompile demo [--target auto] [--out-dir qcompile-demo] [--threads 1]
"""

from __future__ import annotations

import os
import time

import numpy as np

from .. import zoo


def ort_session(model, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def ort_latency(sess, feed: dict, warmup: int, repeat: int) -> float:
    """Median ms per call."""
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def ort_predict(sess, inputs: dict) -> np.ndarray:
    return sess.run(None, inputs)[0]


def ort_int8_model(model_path: str, calib: dict, out_path: str, method: str = "minmax") -> str:
    """ONNX Runtime's own static int8 quantization (QDQ, per-channel, u8 activations / s8 weights).
    method: ORT's calibration, minmax (its default), entropy, percentile or distribution."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            n = len(next(iter(calib.values())))
            self.items = iter([{k: v[i:i + 1] for k, v in calib.items()} for i in range(n)])

        def get_next(self):
            return next(self.items, None)

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile, "distribution": CalibrationMethod.Distribution}
    # quantize_static writes '<model>-inferred.onnx' next to its input: work on a private copy, not
    # beside the original (inside site-packages for the bundled model; two runs raced on that file).
    # The result is renamed into place, so a failed run leaves no half-written out_path.
    import tempfile

    import onnx

    out_dir = os.path.dirname(os.path.abspath(out_path))
    with tempfile.TemporaryDirectory(prefix=".qcompile-ort-int8-", dir=out_dir) as tmp:
        copy, result = os.path.join(tmp, "model.onnx"), os.path.join(tmp, "model_int8.onnx")
        onnx.save(onnx.load(model_path), copy)
        quantize_static(copy, result, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[method])
        os.replace(result, out_path)
    return out_path


def run_demo(target="auto", out_dir="qcompile-demo", threads=1, quantize=None, repeat=200) -> list[dict]:
    import qcompile
    from ..runtime.bench import benchmark

    test_inputs, labels = zoo.digits_test()
    one = {k: v[:1] for k, v in test_inputs.items()}
    rows = []

    variants = [("fp32", None)]
    if quantize:
        variants.append((quantize, _demo_qconfig(quantize)))
    for name, qconfig in variants:
        t = time.perf_counter()
        art = qcompile.compile(zoo.DIGITS_MODEL, target=target, out_dir=os.path.join(out_dir, name),
                               qconfig=qconfig, calib=zoo.digits_calib() if qconfig else None)
        compile_s = time.perf_counter() - t
        logits = art.run(test_inputs)[art.output_names[0]]
        lat = benchmark(art, one, threads=threads, warmup=20, repeat=repeat)
        rows.append({"engine": f"qcompile {name}", "target": art.target_name, "top1": _top1(logits, labels),
                     "median_ms": lat["median_ms"], "compile_s": compile_s, "logits": logits})

    try:
        sess = ort_session(zoo.DIGITS_MODEL, threads)
    except ImportError:
        print("onnxruntime is not installed: pip install 'qcompile[onnxruntime]' to compare with it")
        return rows
    ref = ort_predict(sess, test_inputs)
    rows.append({"engine": "onnxruntime fp32", "target": "cpu", "top1": _top1(ref, labels),
                 "median_ms": ort_latency(sess, one, 20, repeat), "compile_s": None, "logits": ref})
    if quantize:
        q_path = ort_int8_model(zoo.DIGITS_MODEL, zoo.digits_calib(), os.path.join(out_dir, "ort_int8.onnx"))
        qsess = ort_session(q_path, threads)
        qref = ort_predict(qsess, test_inputs)
        rows.append({"engine": "onnxruntime int8", "target": "cpu", "top1": _top1(qref, labels),
                     "median_ms": ort_latency(qsess, one, 20, repeat), "compile_s": None, "logits": qref})
    for r in rows:
        r["max_abs_diff_vs_ort_fp32"] = float(np.abs(r["logits"] - ref).max())
    return rows


def _demo_qconfig(quantize: str):
    from ..quantize.qconfig import QConfig

    return QConfig.from_cli(quantize=quantize)


def _top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == labels).mean())


def format_rows(rows: list[dict], threads: int, n: int) -> str:
    lines = [f"digits CNN, {n} held-out test images, batch 1, {threads} thread(s)",
             f"{'engine':18s} {'target':10s} {'top-1':>7s} {'median ms':>10s} {'max|diff| vs ORT':>17s} {'compile s':>10s}"]
    for r in rows:
        comp = f"{r['compile_s']:.1f}" if r["compile_s"] is not None else "-"
        lines.append(f"{r['engine']:18s} {r['target']:10s} {100 * r['top1']:6.2f}% {r['median_ms']:10.4f} "
                     f"{r.get('max_abs_diff_vs_ort_fp32', float('nan')):17.2e} {comp:>10s}")
    return "\n".join(lines)
