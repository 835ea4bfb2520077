"""Mixed precision driven by accuracy: move the most sensitive layers to int16 (then fp32)
until an accuracy budget holds, moving as few layers as possible.

1. Build the fp32 model and the all-int8 model; measure the budget metric on held-out
   samples (the user's eval data, or the last quarter of the calibration data, which is
   then not used to calibrate).
2. If int8 misses the budget, rank layers by measured sensitivity: the budget metric with
   that layer alone left in float, all in one gated simulation model (``sensitivity.py``).
   A user score function (which takes an artifact) falls back to each layer's own SNR loss
   (``report.layer_errors``).
3. Search the shortest prefix of that ranking that meets the budget when moved to the
   fallback precision (doubling, then bisection), first with int16, then with fp32.

Calibration runs once; every trial reuses the same ranges. This is the loop Intel
Neural Compressor runs, with a per-layer ranking instead of one trial per layer.
"""

from __future__ import annotations

import copy
import sys

import numpy as np

from ..errors import CalibrationError
from .calibrate import check_calib, load_calib
from .metrics import mean_cosine
from .qconfig import BUDGET_METRICS
from .report import layer_errors, layer_report
from .sensitivity import leave_out, shared_tensor_groups

_TRIAL_STAGES = ("annotate", "calibrate", "realize", "offload", "lower", "apply_records", "build", "export")


def search(pipe, state):
    """Run the budget loop from a state after 'preprocess'. Returns the chosen state (not exported)."""
    qconfig, budget = state.qconfig, state.qconfig.budget
    metric, bound_key = budget["metric"], BUDGET_METRICS[budget["metric"]]
    bound = float(budget[bound_key])
    evaluation = state.quant_info.get("evaluation") or {}
    data, n = check_calib(load_calib(state.calib), state.model.inputs)
    eval_inputs = evaluation.get("inputs")
    if eval_inputs is None:
        data, eval_inputs = _hold_out(data, n, state.model.inputs[0].shape[0])
    labels, eval_fn = evaluation.get("labels"), evaluation.get("fn")
    if metric == "top1_drop" and labels is None:
        raise CalibrationError("budget metric top1_drop needs labels for the evaluation data")
    if metric == "score" and eval_fn is None:
        raise CalibrationError("budget metric 'score' needs an eval_fn(artifact) -> float")

    out_dir = state.out_dir
    base = copy.copy(state)
    base.out_dir = None
    ranges, full = {}, {}

    def trial(overrides: dict, qc=qconfig):
        st = copy.copy(base)
        st.qconfig = qc
        st.calib = data
        st.quant_info = {"precision_overrides": dict(overrides), "ranges": ranges or None, "full_ranges": full,
                         "evaluation": evaluation, "want_qdq": state.quant_info.get("want_qdq")}
        st.timings, st.notes = dict(base.timings), list(base.notes)
        pipe.run_stages(st, _TRIAL_STAGES)
        if qc is not None and not ranges:
            ranges.update(st.quant_info["ranges"])
            full.update(st.quant_info["full_ranges"])
        return st

    fp32 = trial({}, qc=None).artifact
    reference = fp32.run(eval_inputs)

    def score(art):
        if metric == "score":
            return float(eval_fn(art))
        return _metric(metric, reference, art.run(eval_inputs), labels)

    def passes(value):
        return value >= bound if bound_key == "min" else value <= bound

    first = trial({})
    value = score(first.artifact)
    trials = [{"moved": [], "precision": qconfig.precision, "value": value, "ok": passes(value)}]
    chosen, ranking = first, []
    sensitivity, together = {}, {}
    if not passes(value):
        if metric == "score":  # the user's eval_fn takes an artifact: rank by the SNR proxy
            ranking = _rank_by_snr(first, eval_inputs)
        else:
            ranking, sensitivity, together = _rank_measured(first, eval_inputs, reference, metric, bound_key,
                                                            labels, state.progress)
        chosen = _shortest_prefix(ranking, qconfig, trial, score, passes, trials) or first
    report = {"metric": metric, bound_key: bound, "fp32_reference": "fp32 outputs on %d held-out samples"
              % len(next(iter(eval_inputs.values()))), "trials": trials, "ranking": ranking,
              "ranking_method": "measured: metric with each layer alone, and each shared tensor's producer "
              "with its consumers, in float (gated simulation)"
              if sensitivity else "snr_drop_db of the layer error report",
              "sensitivity": sensitivity, "sensitivity_together": together,
              "moved": chosen.quant_info.get("precision_overrides", {}), "met": any(t["ok"] for t in trials)}
    _print(report)
    chosen.out_dir = out_dir
    if state.quant_info.get("want_report"):
        chosen.quant_info["evaluation"] = {"inputs": eval_inputs}
        layer_report(chosen)
    chosen.quant_info["mixed"] = report
    chosen.quant_info.setdefault("summary", {})["mixed_precision"] = report
    return chosen


def _rank_measured(first, eval_inputs, reference, metric, bound_key, labels, progress):
    """Compute layers by measured gain: the metric with the layer alone in float minus the metric of
    the all-quantized simulation (sign flipped for 'max' budgets). Returns (ranking, {layer: gain},
    {"producer+consumers": gain} of the shared-tensor groups that gain more together than alone).

    Leave-one-out misses a tensor quantized on both sides of it (an outlier-range FFN output read by
    the residual add, on MiniLM): each side alone changes nothing, the pair changes a lot. So every
    producer is also measured together with the quantized layers that read its output
    (``sensitivity.shared_tensor_groups``), and a group that gains more than its members' gains
    summed enters the ranking as one unit, at its gain."""

    plan = first.quant_info["plan"]
    compute = [layer.name for layer in plan.layers if _is_compute(first, layer.name)]

    def score(out):
        # Ties are broken by the cosine averaged over outputs: discrete metrics (agreement on a few samples)
        # tie often, and the cosine budget takes the worst output, which one layer alone rarely moves when
        # two outputs suffer from different layers.
        return (_metric(metric, reference, out, labels),
                float(np.mean([mean_cosine(reference[k], out[k]) for k in reference])))

    groups = [(name,) for name in compute] + shared_tensor_groups(plan, compute)
    base, measured = leave_out(first, eval_inputs, score, groups, progress=progress)
    sign = 1.0 if bound_key == "min" else -1.0
    gain = {g: (sign * (v - base[0]), c - base[1]) for g, (v, c) in measured.items()}
    alone = {g[0]: v for g, v in gain.items() if len(g) == 1}

    def summed(g):
        return tuple(sum(max(alone.get(n, (0.0, 0.0))[i], 0.0) for n in g) for i in range(2))

    together = {g: v for g, v in gain.items() if len(g) > 1 and v[0] > 0 and v > summed(g)}
    units = [g for g in gain if len(g) == 1 or g in together]  # graph order; the sort below is stable
    ranking: list = []
    for g in sorted(units, key=lambda g: (-gain[g][0], -gain[g][1])):
        members = sorted(g, key=lambda n: (-alone.get(n, (0.0, 0.0))[0], -alone.get(n, (0.0, 0.0))[1]))
        ranking.extend(n for n in members if n not in ranking)
    return (ranking, {name: round(g[0], 6) for name, g in alone.items()},
            {"+".join(g): round(v[0], 6) for g, v in together.items()})


def _rank_by_snr(first, eval_inputs):
    rows = layer_errors(first, eval_inputs, progress=False)
    ranked = sorted((r for r in rows if _is_compute(first, r["layer"])), key=lambda r: (-r["snr_drop_db"], r["snr_db"]))
    return [r["layer"] for r in ranked]


def _shortest_prefix(ranking, qconfig, trial, score, passes, trials):
    """Fewest top-ranked layers moved (int16 first, then fp32) that meet the budget."""
    levels = ["int16", "fp32"] if qconfig.fallback == "int16" and qconfig.precision != "int16" else ["fp32"]
    cache = {}

    def attempt(k, level):
        key = (k, level)
        if key not in cache:
            moved = {name: level for name in ranking[:k]}
            st = trial(moved)
            value = score(st.artifact)
            trials.append({"moved": ranking[:k], "precision": level, "value": value, "ok": passes(value)})
            cache[key] = (passes(value), st)
        return cache[key]

    for level in levels:
        if not ranking or not attempt(len(ranking), level)[0]:
            continue
        lo, k = 0, 1  # lo: known failing count; find the smallest passing k
        while k < len(ranking) and not attempt(k, level)[0]:
            lo, k = k, min(2 * k, len(ranking))
        hi = k
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if attempt(mid, level)[0]:
                hi = mid
            else:
                lo = mid
        return attempt(hi, level)[1]
    return None


def _hold_out(data: dict, n: int, batch: int):
    """Split calibration data: the last quarter (whole batches) is held out for evaluation."""
    k = max(batch, (n // 4) // batch * batch)
    if n - k < batch:
        return data, data
    return {name: a[: n - k] for name, a in data.items()}, {name: a[n - k:] for name, a in data.items()}


def _metric(metric: str, ref: dict, got: dict, labels) -> float:
    names = list(ref)
    if metric == "cosine":  # the worst output's mean cosine: one large output must not hide a ruined one
        return min(mean_cosine(ref[k], got[k]) for k in names)
    first = names[0]
    if metric == "agreement":
        return float((ref[first].argmax(-1) == got[first].argmax(-1)).mean())
    if metric == "top1_drop":
        labels = np.asarray(labels)
        return float((ref[first].argmax(-1) == labels).mean() - (got[first].argmax(-1) == labels).mean())
    raise ValueError(metric)


def _is_compute(state, layer_name: str) -> bool:
    return state.quant_info["plan"].layer(layer_name).rule.kind == "compute"


def _print(report: dict):
    bound_key = "min" if "min" in report else "max"
    print(f"mixed precision: {report['metric']} {bound_key} {report[bound_key]}", file=sys.stderr)
    for t in report["trials"]:
        moved = ", ".join(t["moved"]) if t["moved"] else "none"
        print(f"  {'ok  ' if t['ok'] else 'miss'} {t['value']:.6f}  moved to {t['precision']}: {moved}", file=sys.stderr)
    if not report["met"]:
        print("  budget not met by any trial; keeping the all-%s model" % report["trials"][0]["precision"], file=sys.stderr)
