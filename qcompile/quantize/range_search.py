"""Auto calibration: each activation's range is the candidate that hurts the layer using it least.

No single range method suits every tensor. Min/max keeps a lone outlier and spends the whole int8
grid on it (a recognizer read 0.3% of its lines after that); entropy and percentile clip tensors
whose large values carry the answer (entropy read 0%); mse is right more often than not. So the
default (``calib_method: auto``) does what TensorRT, NNCF and INC do in their ways: one histogram
per tensor gives every method's range (``HistogramObserver.candidate_ranges``), and the range kept
is the one with the smallest error at the tensor's quantized consumer's output, measured on
calibration samples.

The measurement is one extra run of a *probe* copy of ``main``: for every observed tensor ``x`` and
each of its conv2d/matmul consumers ``f``, the probe stacks the candidates' fake-quantized copies of
``x`` along the batch axis, runs ``f`` once on the stack, and returns ``sum((f(fq_k(x)) - f(x))^2)``
per candidate next to ``sum(f(x)^2)``. Other tensors of the model stay fp32, so each tensor is judged
alone, and a batch of C candidates costs one call of its consumer, not C. A tensor no conv/matmul
reads (pool, add, concat inputs; the last output) is judged by its own error ``fq_k(x) - x``.
"""

from __future__ import annotations

import numpy as np

from ..build import host_vm
from .annotate import QuantPlan
from .realize import Realizer

# Preference order on ties: the first listed wins (mse is the usual winner and the old default).
PREFERENCE = ("mse", "percentile_99.99", "percentile_99.9", "entropy", "minmax")
LINEAR_OPS = ("relax.nn.conv2d", "relax.matmul")
PROBE_SAMPLES = 16   # calibration samples the probe runs on
MAX_CONSUMERS = 4    # conv/matmul consumers measured per tensor (the first ones in the graph)


def candidates_of(observer) -> list[tuple[str, tuple[float, float]]]:
    """The observer's distinct candidate ranges, in PREFERENCE order."""
    found = observer.candidate_ranges()
    out, seen = [], set()
    for name in PREFERENCE + tuple(sorted(set(found) - set(PREFERENCE))):
        if name not in found:
            continue
        key = tuple(np.float32(found[name]).tolist())
        if key in seen or found[name][1] - found[name][0] <= 0:
            continue
        seen.add(key)
        out.append((name, found[name]))
    return out


def _stackable(call, var) -> bool:
    """Whether `var`'s candidates can be stacked along axis 0 of this consumer's argument."""
    from tvm import relax

    args = list(call.args)
    ndim = len(var.ty.shape) if var.ty.shape is not None else 0
    if call.op.name == "relax.nn.conv2d":
        return args[0].same_as(var) and not args[1].same_as(var) and call.attrs.data_layout in ("NCHW", "NHWC")
    if call.op.name == "relax.matmul":
        if ndim < 2 or args[0].same_as(args[1]):
            return False
        other = args[1] if args[0].same_as(var) else args[0]
        other_ndim = len(other.ty.shape) if isinstance(other, relax.Expr) and other.ty.shape is not None else 0
        if args[0].same_as(var):
            return True  # rows (and batch entries) of the left operand are independent
        return ndim >= 3 and other_ndim >= 3  # the right operand: only along a batch axis
    return False


class _Probe:
    """Builds the probe function through a float rebuild of main (see the module docstring)."""

    def __init__(self, plan, cands: dict, dtypes: dict):
        self.plan, self.cands, self.dtypes = plan, cands, dtypes
        self.index: list[tuple] = []  # per output pair: (var, consumer name or None)

    def consumers(self, var):
        return [layer for layer in self.plan.layers
                if layer.op in LINEAR_OPS and layer.precision != "fp32" and any(a.same_as(var) for a in layer.inputs)
                and _stackable(layer.call, var)][:MAX_CONSUMERS]

    def outputs(self, r):
        from tvm import relax

        outs = []
        for var, cands in self.cands.items():
            x = r.float_of(var)
            fqs = []
            for _, rng in cands:
                r.ranges[var] = rng
                fqs.append(r._fake_quant(x, var, self.dtypes[var]))
            c = len(fqs)
            stacked = r.bb.emit(relax.op.concat(fqs, axis=0), name_hint=var.name + "_cands")
            consumers = self.consumers(var)
            for layer in consumers:
                args = []
                for a in layer.call.args:
                    if a.same_as(var):
                        args.append(stacked)
                    elif isinstance(a, relax.Var):
                        fa = r.float_of(a)
                        nd = len(a.ty.shape) if a.ty.shape is not None else 0
                        args.append(r.bb.emit(relax.op.concat([fa] * c, axis=0)) if nd >= 3 and c > 1 else fa)
                    else:
                        args.append(a)
                y = r.bb.emit(relax.Call(layer.call.op, args, layer.call.attrs, layer.call.ty_args))
                outs += self._error(r, y, r.float_of(layer.anchor), c)
                self.index.append((var, layer.name))
            if not consumers:
                outs += self._error(r, stacked, x, c)
                self.index.append((var, None))
        return relax.Tuple(outs)

    @staticmethod
    def _error(r, stacked, ref, c: int):
        """[sum((candidate_k - ref)^2) for k < c], sum(ref^2)."""
        from tvm import relax

        refs = r.bb.emit(relax.op.concat([ref] * c, axis=0)) if c > 1 else ref
        diff = r.bb.emit(relax.op.subtract(stacked, refs))
        sq = r.bb.emit(relax.op.reshape(r.bb.emit(relax.op.multiply(diff, diff)), [c, -1]))
        err = r.bb.emit(relax.op.sum(sq, axis=[1]))
        energy = r.bb.emit(relax.op.sum(r.bb.emit(relax.op.multiply(ref, ref))))
        return [err, energy]


def search(plan, qconfig, observers: dict, model_inputs, data: dict, n: int, progress=True) -> tuple[dict, dict]:
    """Pick each observed tensor's range among its observer's candidates.

    observers -- {var: HistogramObserver} after the calibration pass
    Returns ({var: (lo, hi)}, {tensor name: {"chosen": method, "errors": {method: relative error}}}).
    """
    import tvm

    dtypes, cands, ranges, report = {}, {}, {}, {}
    for var, obs in observers.items():
        users = [layer for layer in plan.layers if any(a.same_as(var) for a in layer.inputs)]
        int16 = any(layer.precision == "int16" for layer in users)
        found = candidates_of(obs)
        ranges[var] = found[0][1] if found else tuple(obs.compute_range())
        if int16 or len(found) < 2:
            report[var.name] = {"chosen": found[0][0] if found else "minmax", "errors": {}}
            continue
        dtypes[var] = qconfig.activation_dtype
        cands[var] = found
    if not cands:
        return ranges, report

    probe = _Probe(plan, cands, dtypes)
    float_plan = QuantPlan(layers=[], observe=[], func=plan.func, mod=plan.mod)
    rz = Realizer(float_plan, {}, qconfig)
    vm = host_vm(plan.with_main(rz.rebuild(plan.func, outputs=probe.outputs)))

    batch = model_inputs[0].shape[0] if model_inputs[0].shape else 1
    samples = max(batch, min(n, PROBE_SAMPLES) // batch * batch)
    errors = [None] * len(probe.index)
    energies = np.zeros(len(probe.index))
    steps = range(0, samples, batch)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="calibrate (auto: range search)", unit="batch", leave=False, total=samples // batch)
    for start in steps:
        args = [tvm.runtime.tensor(np.ascontiguousarray(data[s.name][start:start + batch])) for s in model_inputs]
        outs = vm["main"](*args)
        for i in range(len(probe.index)):
            e = outs[2 * i].numpy().astype(np.float64)
            errors[i] = e if errors[i] is None else errors[i] + e
            energies[i] += float(outs[2 * i + 1].numpy())

    score = {var: np.zeros(len(c)) for var, c in cands.items()}
    for i, (var, _) in enumerate(probe.index):
        score[var] += errors[i] / max(energies[i], 1e-30)
    for var, found in cands.items():
        best = int(np.argmin(score[var]))  # the first of equal scores: PREFERENCE order
        ranges[var] = found[best][1]
        report[var.name] = {"chosen": found[best][0],
                            "errors": {name: float(s) for (name, _), s in zip(found, score[var])}}
    return ranges, report


def summary(report: dict) -> str:
    """'auto calibration chose mse for 40 tensors, percentile_99.99 for 12, ...'."""
    counts: dict = {}
    for row in report.values():
        counts[row["chosen"]] = counts.get(row["chosen"], 0) + 1
    parts = [f"{m} for {k}" for m, k in sorted(counts.items(), key=lambda kv: -kv[1])]
    return "auto calibration chose " + ", ".join(parts) + " tensor(s) (by the error at each tensor's consumers)"
