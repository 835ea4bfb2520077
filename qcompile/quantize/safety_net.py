"""The safety net (on by default for int8): check the quantized model on held-back samples before it ships.

After calibration and before realize, the gated simulation model (``sensitivity.GatedModel``: one
build; all gates 0 is the fp32 model, all gates 1 the quantized one, on the grids realize uses) runs
the held-back calibration samples. The model passes when the output cosine with fp32 (the worst
output's mean over samples) is at least ``COSINE_MIN`` and the argmax of the first output agrees
with fp32's at ``AGREEMENT_MIN`` of its positions (a class per sample, a character per CTC step).

A model that misses is not shipped as is. Its layers are ranked by measured sensitivity (each
conv/matmul alone in float, the other layers quantized: ``sensitivity.leave_out``), and the fewest
top-ranked layers whose float versions bring the model back over both thresholds move to the
fallback precision (int16, as good as float in the cases measured). At most ``MAX_FRACTION`` of the
conv/matmul layers (at least one) may leave 8-bit: the net is for a few layers, and the calibration
methods must carry the rest. When even that many do not meet the thresholds, they move only if they
close at least half of the gap (``PARTIAL_GAIN``; silero VAD's one allowed move had read 97.3% agreement
against 97.7% without it), and the note says the model still misses.

Cheap by construction: one extra build (the gated model) and a few runs; the ranking's runs, one per
layer, only when the check fails.
"""

from __future__ import annotations

import time

import numpy as np

from .metrics import mean_cosine
from .sensitivity import GatedModel, leave_out

COSINE_MIN = 0.99
AGREEMENT_MIN = 0.95
MAX_FRACTION = 0.10
HELD_BACK = 16           # held-back calibration samples at most (a quarter of them at most)
RANK_SECONDS = 60.0      # the ranking's runs (one per conv/matmul) take about this long at most: fewer samples
                         # when one run is slow (PP-OCR det, 736x736, 62 convs x 8 samples of such runs)
LINEAR_OPS = ("relax.nn.conv2d", "relax.matmul")
PARTIAL_GAIN = 0.5       # a move that does not meet the thresholds must at least halve the shortfall


def applies(qconfig, state) -> bool:
    """int8 static quantization with calibration data, no user budget (the budget loop is the user's net)."""
    # simulate mode too: it must calibrate and plan exactly as the integer model it simulates
    return (bool(getattr(qconfig, "safety_net", False)) and qconfig.precision == "int8" and not qconfig.is_dynamic
            and not qconfig.is_float and qconfig.budget is None and not state.quant_info.get("fixed_qparams"))


def hold_back(data: dict, n: int, batch: int) -> tuple[dict, int, dict | None]:
    """Split calibration data into (calibration part, its count, held-back part or None when too few)."""
    k = min(HELD_BACK, n // 4) // batch * batch
    if k < 1 or n - k < batch:
        return data, n, None
    return ({name: a[: n - k] for name, a in data.items()}, n - k, {name: a[n - k:] for name, a in data.items()})


def metrics(reference: dict, got: dict) -> tuple[float, float]:
    """(worst output's mean cosine, argmax agreement of the first output) of `got` against `reference`."""
    cos = min(mean_cosine(reference[k], got[k]) for k in reference)
    first = next(iter(reference))
    agree = float((reference[first].argmax(-1) == got[first].argmax(-1)).mean())
    return cos, agree


def check(state, held: dict, progress: bool = True) -> tuple[dict, dict]:
    """Run the net on a state after calibration. Returns ({layer: precision} to move, report)."""
    plan = state.quant_info["plan"]
    qconfig = state.quant_info["qconfig"]
    model = GatedModel(state)
    zeros = np.zeros(len(model.layers), np.float32)
    reference = model.run(held, zeros)
    start = time.perf_counter()
    cos, agree = metrics(reference, model.run(held, np.ones(len(model.layers), np.float32)))
    run_seconds = time.perf_counter() - start
    report = {"cosine": round(cos, 6), "agreement": round(agree, 6), "cosine_min": COSINE_MIN,
              "agreement_min": AGREEMENT_MIN, "held_back_samples": len(next(iter(held.values()))), "moved": {}}
    if cos >= COSINE_MIN and agree >= AGREEMENT_MIN:
        report["passed"] = True
        return {}, report

    linear = [layer.name for layer in plan.layers
              if layer.op in LINEAR_OPS and layer.precision == "int8" and layer.name in model.simulated]
    cap = max(1, int(MAX_FRACTION * len(linear)))

    def scorer(ref):
        def score(out):
            c, a = metrics(ref, out)
            return (min(c / COSINE_MIN, a / AGREEMENT_MIN), c)  # above 1 on both: passes
        return score

    n_held, batch = len(next(iter(held.values()))), state.model.inputs[0].shape[0]
    rank_n = max(batch, int(RANK_SECONDS / max(run_seconds / n_held * len(linear), 1e-9)) // batch * batch)
    rank_n = min(rank_n, n_held)  # rank on the first rank_n samples; the moves are judged on all of them
    _, measured = leave_out(state, {name: a[:rank_n] for name, a in held.items()},
                            scorer({name: a[:rank_n] for name, a in reference.items()}),
                            [(name,) for name in linear], progress=progress, model=model)
    score = scorer(reference)
    ranking = sorted(linear, key=lambda n: (-measured[(n,)][0], -measured[(n,)][1]))
    best_value, moved = (min(cos / COSINE_MIN, agree / AGREEMENT_MIN), cos), []  # all int8, on every sample
    for k in range(1, min(cap, len(ranking)) + 1):  # the fewest top-ranked layers that pass, else the best
        gates = np.ones(len(model.layers), np.float32)
        for name in ranking[:k]:
            gates[model.layers.index(name)] = 0.0
        value = score(model.run(held, gates))
        if value > best_value:
            best_value, moved = value, ranking[:k]
        if value[0] >= 1.0:
            break
    level = qconfig.fallback
    start_value = min(cos / COSINE_MIN, agree / AGREEMENT_MIN)
    met = bool(best_value[0] >= 1.0)
    if not met and (1.0 - best_value[0]) > PARTIAL_GAIN * (1.0 - start_value):
        moved = []  # the most the net may move does not close half the gap: 8 bits are kept, not traded for little
    report.update({"passed": False, "ranking": ranking[: 2 * cap], "ranked_on_samples": rank_n,
                   "cap": cap, "linear_layers": len(linear), "value_before": round(start_value, 6),
                   "value_after_move": round(float(best_value[0]), 6),
                   "moved": {name: level for name in moved}, "met_after_move": met})
    return {name: level for name in moved}, report


def note(report: dict) -> str:
    head = (f"safety net: int8 output cosine {report['cosine']:.4f}, argmax agreement {report['agreement']:.4f} "
            f"on {report['held_back_samples']} held-back samples")
    if report.get("passed"):
        return head + " (passed)"
    moved = ", ".join(f"{n} -> {p}" for n, p in report["moved"].items()) or "none"
    tail = "" if report.get("met_after_move") else "; still below the thresholds: consider --budget"
    return (head + f" below {report['cosine_min']}/{report['agreement_min']}: moved {len(report['moved'])} of "
            f"{report['linear_layers']} conv/matmul layers (at most {report['cap']}): {moved}{tail}")
