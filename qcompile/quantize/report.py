"""Per-layer quantization error: fp32 vs quantized activations, like ORT's qdq_loss_debug.

Two copies of ``main`` are built and run on the same samples: the fp32 model
returning every quantized layer's output, and the realized integer model returning
the same outputs dequantized. Per layer we report SNR (dB), cosine similarity and
max abs error, plus the layer's *own* contribution: how much SNR it loses relative
to its inputs (``snr_drop_db``), which is what mixed precision ranks layers by.
"""

from __future__ import annotations

import math
import os

import numpy as np

from ..build import host_vm
from ..io import write_json_atomic
from .calibrate import calibration_module, check_calib, load_calib
from .realize import Realizer
from .reference import dequantize, quantize

class _Stats:
    """Running sums for one tensor pair, so memory stays bounded."""

    def __init__(self):
        self.signal = self.noise = self.dot = self.ref_sq = self.q_sq = 0.0
        self.max_err = 0.0

    def update(self, ref: np.ndarray, q: np.ndarray):
        ref, q = ref.astype(np.float64).ravel(), q.astype(np.float64).ravel()
        err = q - ref
        self.signal += float(ref @ ref)
        self.noise += float(err @ err)
        self.dot += float(ref @ q)
        self.ref_sq += float(ref @ ref)
        self.q_sq += float(q @ q)
        self.max_err = max(self.max_err, float(np.abs(err).max(initial=0.0)))

    def result(self) -> dict:
        snr = 10 * math.log10(self.signal / self.noise) if self.noise > 0 and self.signal > 0 else float("inf")
        denom = math.sqrt(self.ref_sq * self.q_sq)
        cos = self.dot / denom if denom > 0 else 1.0
        return {"snr_db": snr, "cosine": cos, "max_abs_err": self.max_err}


def layer_errors(state, samples: dict, max_samples: int = 64, progress: bool = True) -> list[dict]:
    """Per-layer error rows for a compile state after realize (plan, ranges, qconfig in quant_info)."""
    import tvm
    from tvm import relax

    plan, ranges, qconfig = (state.quant_info[k] for k in ("plan", "ranges", "qconfig"))
    rz = Realizer(plan, ranges, qconfig, state.quant_info.get("full_ranges"))
    layers = [layer for layer in plan.layers if layer.precision != "fp32"]

    def exposed(r):
        shown = [layer for layer in layers
                 if layer.out in r.int_map or (layer.attrs.get("float_out") and layer.name in r.realized)]
        exposed.layers = shown
        return relax.Tuple([r.float_of(layer.out) for layer in shown])

    qmod = plan.with_main(rz.rebuild(plan.func, outputs=exposed))
    shown = exposed.layers
    fmod, _ = calibration_module(plan, [layer.out for layer in shown])
    fvm, qvm = host_vm(fmod), host_vm(qmod)
    data, n = check_calib(samples, state.model.inputs, max_samples)
    batch = state.model.inputs[0].shape[0]
    stats = [_Stats() for _ in shown]
    steps = range(0, n, batch)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="layer errors", unit="batch", leave=False)
    for start in steps:
        args = [tvm.runtime.tensor(np.ascontiguousarray(data[s.name][start:start + batch])) for s in state.model.inputs]
        for st, ref, q in zip(stats, fvm["main"](*args), qvm["main"](*args)):
            st.update(ref.numpy(), q.numpy())
    snr_of = _input_snr(state, data, n, rz)
    rows = []
    for layer, st in zip(shown, stats):
        row = {"layer": layer.name, "op": layer.op.rsplit(".", 1)[-1], "precision": state.quant_info["realized"].get(layer.name, layer.precision)}
        row.update(st.result())
        snr_of[layer.out] = row["snr_db"]
        rows.append(row)
    for layer, row in zip(shown, rows):
        ins = [snr_of[v] for v in layer.inputs if v in snr_of]
        snr_in = min(ins) if ins else 60.0  # inputs computed in fp32 carry no quantization error
        row["snr_drop_db"] = max(0.0, min(snr_in, 60.0) - min(row["snr_db"], 60.0))
    return rows


def _input_snr(state, data: dict, n: int, rz) -> dict:
    """SNR of quantizing each model input that enters an integer layer (the entry quantize)."""

    out = {}
    for param, spec in zip(rz.plan.func.params, state.model.inputs):
        match = [v for v in rz.ranges if v.same_as(param)]
        if not match or spec.name not in data:
            continue
        x = data[spec.name][:n].astype(np.float32)
        dtype = rz.qconfig.activation_dtype
        scale, zp = rz.qparams(match[0], dtype)
        err = dequantize(quantize(x, scale, zp, dtype), scale, zp) - x
        noise, signal = float((err.astype(np.float64) ** 2).sum()), float((x.astype(np.float64) ** 2).sum())
        out[match[0]] = 10 * math.log10(signal / noise) if noise > 0 and signal > 0 else 60.0
    return out


def format_table(rows: list[dict]) -> str:
    lines = [f"{'layer':16s} {'op':12s} {'prec':6s} {'SNR dB':>8s} {'drop dB':>8s} {'cosine':>9s} {'max|err|':>10s}"]
    for r in rows:
        lines.append(f"{r['layer']:16s} {r['op']:12s} {r['precision']:6s} {r['snr_db']:8.2f} {r['snr_drop_db']:8.2f} "
                     f"{r['cosine']:9.6f} {r['max_abs_err']:10.4g}")
    return "\n".join(lines)


def save(rows: list[dict], json_path: str | None = None, png_path: str | None = None):
    """Write the rows as JSON and a bar chart of SNR per layer (both atomically)."""

    if json_path:
        write_json_atomic(json_path, [{k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in r.items()}
                                      for r in rows])
    if png_path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(rows)), 4))
        snr = [min(r["snr_db"], 80.0) for r in rows]
        colors = ["tab:red" if r["snr_drop_db"] > 6 else "tab:blue" for r in rows]
        ax.bar(range(len(rows)), snr, color=colors)
        ax.set_xticks(range(len(rows)), [r["layer"] for r in rows], rotation=70, ha="right", fontsize=8)
        ax.set_ylabel("SNR vs fp32 (dB)")
        ax.set_title("per-layer quantization error (red: layer loses > 6 dB)")
        fig.tight_layout()
        tmp = png_path + ".tmp.png"
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        os.replace(tmp, png_path)


def layer_report(state):
    """Compute, print and attach the per-layer table (saved in the artifact as quant_report.json/.png)."""
    evaluation = state.quant_info.get("evaluation") or {}
    samples = evaluation.get("inputs") or load_calib(state.calib)
    rows = layer_errors(state, samples, progress=state.progress)
    print(format_table(rows))
    state.quant_info["report_rows"] = rows
    state.quant_info.setdefault("files", {}).update({
        "quant_report.json": lambda path: save(rows, json_path=path),
        "quant_report.png": lambda path: save(rows, png_path=path),
    })
