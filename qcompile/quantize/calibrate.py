"""Calibrate: run the fp32 model on sample data and pick a range for every observed tensor.

The plan's observed tensors become the outputs of a calibration copy of ``main``,
compiled for the host CPU. Calibration samples are fed in chunks of the model's
batch size, with a progress bar; each chunk's tensors go straight into bounded-memory
observers (running min/max or histograms), never kept.

Calibration data is ``{input name: array}`` whose first axis indexes samples, from an
``.npz`` file or a folder of them. Wrong keys, shapes, dtypes, NaN/Inf and empty data
are errors that say what to fix.
"""

from __future__ import annotations

import glob
import os

import numpy as np

from ..build import host_vm
from ..errors import CalibrationError
from .annotate import QuantPlan
from . import bias_correction, range_search, safety_net, smooth
from .observers import make_observer
from .realize import Realizer


def load_calib(src) -> dict:
    """Calibration arrays from a dict, an .npz path, or a folder of .npz files (concatenated)."""
    if src is None:
        raise CalibrationError("quantization needs calibration data: pass --calib FILE.npz (keys = input names, "
                               "first axis = samples)")
    if isinstance(src, dict):
        return {k: np.asarray(v) for k, v in src.items()}
    path = os.fspath(src)
    files = sorted(glob.glob(os.path.join(path, "*.npz"))) if os.path.isdir(path) else [path]
    if not files:
        raise CalibrationError(f"{path}: folder holds no .npz files")
    parts: dict = {}
    for f in files:
        if not os.path.isfile(f):
            raise CalibrationError(f"{f}: no such calibration file")
        try:
            with np.load(f, allow_pickle=False) as data:
                for k in data.files:
                    parts.setdefault(k, []).append(data[k])
        except (OSError, ValueError) as err:
            raise CalibrationError(f"{f}: not a readable .npz file ({err})") from None
    return {k: np.concatenate(v, axis=0) if len(v) > 1 else v[0] for k, v in parts.items()}


def check_calib(data: dict, inputs, num_samples=None) -> tuple[dict, int]:
    """Validate calibration arrays against the model inputs; returns (arrays, sample count)."""
    names = [s.name for s in inputs]
    unknown, missing = sorted(set(data) - set(names)), [n for n in names if n not in data]
    if unknown or missing:
        raise CalibrationError(f"calibration keys do not match the model inputs: unknown {unknown}, missing {missing}; "
                               f"the model's inputs are {', '.join(str(s) for s in inputs)}")
    counts = set()
    for spec in inputs:
        a = data[spec.name]
        if a.dtype != np.dtype(spec.dtype):
            raise CalibrationError(f"calibration input '{spec.name}' has dtype {a.dtype}, the model expects {spec.dtype}")
        if a.ndim != len(spec.shape) or tuple(a.shape[1:]) != tuple(spec.shape[1:]):
            raise CalibrationError(f"calibration input '{spec.name}' has shape {list(a.shape)}; expected "
                                   f"[N, {', '.join(map(str, spec.shape[1:]))}] (first axis = samples)")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            bad = int((~np.isfinite(a)).sum())
            raise CalibrationError(f"calibration input '{spec.name}' holds {bad} NaN/Inf value(s); clean the data")
        counts.add(a.shape[0])
    if len(counts) != 1:
        raise CalibrationError(f"calibration inputs hold different sample counts {sorted(counts)}")
    n = counts.pop()
    if num_samples:
        n = min(n, num_samples)
        data = {k: v[:n] for k, v in data.items()}
    batch = inputs[0].shape[0] if inputs[0].shape else 1
    if n == 0:
        raise CalibrationError("calibration data holds 0 samples")
    if n < batch:
        raise CalibrationError(f"calibration data holds {n} samples, fewer than the model's batch size {batch}")
    usable = n - n % batch
    return {k: v[:usable] for k, v in data.items()}, usable


def calibration_module(plan, tensors=None):
    """A copy of main returning the observed tensors (a tuple), for the calibration run."""
    import tvm
    from tvm import relax

    tensors = list(plan.observe if tensors is None else tensors)
    float_plan = QuantPlan(layers=[], observe=[], func=plan.func, mod=plan.mod)
    rz = Realizer(float_plan, {}, None)
    func = rz.rebuild(plan.func, outputs=lambda r: relax.Tuple([r.float_of(v) for v in tensors]))
    return plan.with_main(func), tensors


def _batches(vm, model_inputs, data: dict, n: int, desc: str, progress: bool):
    """The calibration module's outputs, one batch of samples at a time (with a progress bar)."""
    import tvm

    batch = model_inputs[0].shape[0]
    steps = range(0, n, batch)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc=desc, unit="batch", leave=False, total=n // batch)
    for start in steps:
        args = [tvm.runtime.tensor(np.ascontiguousarray(data[s.name][start:start + batch])) for s in model_inputs]
        yield vm["main"](*args)


def run_observers(plan, model_inputs, data: dict, n: int, method: str, params: dict, progress=True, smoother=None,
                  means=None):
    """Feed every observed tensor of every calibration batch to its observer.

    smoother -- a smooth.Smoother: first fed up to smooth.STAT_SAMPLES samples to choose its factors,
    then the observer of each smoothed activation ``x / s`` sees ``x * (1/s)`` of every batch.
    means -- a bias_correction.InputMeans, fed the same batches (smoothed activations included).

    Returns ({var: (lo, hi)} by the method, {var: (min, max)} unclipped, {var: observer}); int16 tensors
    use the unclipped range, since 16 bits resolve the full range and clipping would only add error."""
    if not plan.observe:
        return {}, {}, {}
    mod, tensors = calibration_module(plan)
    vm = host_vm(mod)
    taps = []
    if smoother:
        batch = model_inputs[0].shape[0]
        m = max(batch, min(n, smooth.STAT_SAMPLES) // batch * batch)
        for outs in _batches(vm, model_inputs, data, m, "calibrate (smoothing statistics)", progress):
            smoother.observe(tensors, outs)
        smoother.choose()
        taps = smoother.tap(tensors)
        if means is not None:
            for i, xs, _ in taps:
                means.watch(xs, means.axes.get(tensors[i], -1))
    observers = [make_observer(method, name=v.name, **params) for v in tensors]
    tap_observers = [make_observer(method, name=xs.name, **params) for _, xs, _ in taps]
    for outs in _batches(vm, model_inputs, data, n, f"calibrate ({method})", progress):
        for v, obs, out in zip(tensors, observers, outs):
            a = out.numpy()  # one host copy at a time (a detector's tensors of one batch can take GBs together)
            obs.update(a)
            if means is not None:
                means.update(v, a)
        for obs, (i, xs, inv) in zip(tap_observers, taps):
            a = outs[i].numpy()
            obs.update(a * inv)
            if means is not None:
                means.update(xs, a, factor=inv.reshape(-1))
    tensors = tensors + [xs for _, xs, _ in taps]
    observers = observers + tap_observers
    ranges = {v: tuple(obs.compute_range()) for v, obs in zip(tensors, observers)}
    full = {v: (min(float(getattr(obs, "min_val", lo)), 0.0), max(float(getattr(obs, "max_val", hi)), 0.0))
            for v, obs, (lo, hi) in zip(tensors, observers, ranges.values())}
    return ranges, full, dict(zip(tensors, observers))


def calibrate(state) -> dict:
    """Pipeline stage: ranges for the plan in state.quant_info (needs state.calib).

    Tensors whose scales a pre-quantized model fixed are not observed; with all of them
    fixed, no calibration data is needed."""
    import dataclasses

    qconfig = state.quant_info["qconfig"]
    plan = state.quant_info["plan"]
    fixed = state.quant_info.get("fixed_qparams") or {}
    if fixed:
        missing = [v for v in plan.observe if v not in fixed]
        if not missing:
            state.quant_info["full_ranges"] = {}
            return {}
        if state.calib is None:
            raise CalibrationError(f"the model is pre-quantized but {len(missing)} tensor(s) feeding integer layers have "
                                   f"no QuantizeLinear/DequantizeLinear (e.g. '{missing[0].name}'); pass --calib "
                                   "FILE.npz to calibrate them, or --keep-fp32 those layers")
        plan = dataclasses.replace(plan, observe=missing)
    data, n = check_calib(load_calib(state.calib), state.model.inputs, qconfig.num_samples)
    if safety_net.applies(qconfig, state):  # samples the net checks are not calibrated on
        data, n, state.quant_info["net_inputs"] = safety_net.hold_back(data, n, state.model.inputs[0].shape[0])
    params = dict(qconfig.calib_params)
    if qconfig.calib_method in ("percentile", "entropy", "mse", "auto"):
        params.setdefault("dtype", qconfig.activation_dtype)
        params.setdefault("symmetric", bool(qconfig.symmetric_activations))
    smoother = smooth.Smoother(plan, qconfig) if smooth.applies(qconfig, state) else None
    means = bias_correction.InputMeans(plan) if bias_correction.applies(qconfig, state) else None
    ranges, full, observers = run_observers(plan, state.model.inputs, data, n, qconfig.calib_method, params,
                                            progress=state.progress, smoother=smoother, means=means)
    if smoother:
        state.quant_info["smoothing"] = smoother.report
        if smoother.smoothed:
            plan = _smoothed_plan(state, smoother)
            state.notes.append(smoother.note())
        if smoother.dynamic:
            state.quant_info["dynamic_anchors"] = {layer.anchor for g in smoother.dynamic for layer in g.layers}
            state.notes.append(smoother.dynamic_note())
    if means is not None:
        state.quant_info["input_means"] = means.means()
    carry_over(plan, state.quant_info)
    if qconfig.calib_method == "auto":
        ranges, choice = range_search.search(plan, qconfig, observers, state.model.inputs, data, n,
                                             progress=state.progress)
        state.quant_info["calib_choice"] = choice
        if choice:
            state.notes.append(range_search.summary(choice))
    state.quant_info["num_calib_samples"] = n
    state.quant_info["full_ranges"] = full
    return ranges


def carry_over(plan, quant_info: dict) -> None:
    """What calibration decided about the plan's layers, onto `plan` (again after every re-annotate):
    the input means of bias correction and the layers that take per-token dynamic scales."""
    plan.input_means = quant_info.get("input_means", {})
    dynamic = quant_info.get("dynamic_anchors", ())
    for layer in plan.layers:
        if layer.anchor in dynamic:
            layer.attrs["dynamic"] = True


def _smoothed_plan(state, smoother) -> QuantPlan:
    """Rewrite state.mod with the smoother's factors and plan it again (every other tensor keeps its Var,
    so its range stays valid; the smoothed activations were calibrated in the same pass)."""
    from .annotate import annotate

    state.mod = smoother.rewrite(state.mod)
    info = state.quant_info
    info["float_vars"] = {g.smoothed for g in smoother.smoothed}
    info["plan"] = annotate(state.mod, info["qconfig"], state.target, info.get("precision_overrides"),
                            info.get("source_names"), info["float_vars"])
    return info["plan"]
