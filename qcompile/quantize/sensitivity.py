"""Measured per-layer sensitivity, for mixed precision.

One simulation model is built (fake quant in float, on the grids realize uses) in which
each quantized layer's quantization is scaled by one entry of an extra runtime input,
``gates``: every fake-quantized value becomes ``x + g * (fq(x) - x)`` and every weight
``w + g * (fq(w) - w)``. With all gates at 1 it is the quantized model; with gate i at
0, layer i runs in float and everything else stays quantized.

So one compile measures, for every layer, the budget metric with that layer alone left
in float ("leave one out"): the gain over the all-quantized model is the layer's
sensitivity, measured on the held-out data with the real metric rather than guessed
from a per-tensor proxy.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..build import host_vm
from ..io import flatten_tensors
from .realize import Realizer

GATES = "qcompile_gates"


class GatedSimulation(Realizer):
    """Realizer in simulate mode whose per-layer fake quantization is switched by `gates`."""

    def __init__(self, plan, ranges, qconfig, full_ranges, gates, index: dict):
        super().__init__(plan, ranges, dataclasses.replace(qconfig, mode="simulate"), full_ranges)
        self.gates, self.index, self.gate = gates, index, None

    def _simulate(self, layer):
        from tvm import relax

        self.gate = self.emit(relax.op.take(self.gates, relax.const(self.index[layer.name], "int64"), axis=0),
                              f"gate_{layer.name}")
        super()._simulate(layer)

    def _fake_quant(self, expr, var, dtype, dynamic_axis=None):
        from tvm import relax

        fq = super()._fake_quant(expr, var, dtype, dynamic_axis)
        return self.emit(relax.op.add(expr, relax.op.multiply(self.gate, relax.op.subtract(fq, expr))),
                         var.name + "_gated")

    def _gated(self, expr):
        from tvm import relax

        return relax.op.multiply(self.gate, expr)

    def _with_fake_weight(self, layer, call):
        import tvm
        from tvm import relax

        faked = super()._with_fake_weight(layer, call)
        args = []
        for orig, new in zip(call.args, faked.args):
            if isinstance(orig, tvm.ir.expr.Constant) and not new.same_as(orig):
                delta = (new.value.numpy().astype(np.float32) - orig.value.numpy().astype(np.float32))
                new = self.emit(relax.op.add(orig, self._gated(relax.const(delta))), "gated_weight")
            args.append(new)
        return relax.Call(call.op, args, call.attrs, call.ty_args)


class GatedModel:
    """The gated simulation of a compile state after realize, compiled for this host.

    ``layers``: the names of the gated layers, in gate order; ``run(inputs, gates)`` runs
    it on {input name: array of whole batches} with gates[i] scaling layer i's quantization.
    """

    def __init__(self, state):
        from tvm import relax

        info = state.quant_info
        plan = info["plan"]
        self.layers = [layer.name for layer in plan.layers if layer.precision != "fp32"]
        index = {name: i for i, name in enumerate(self.layers)}
        gates = relax.Var(GATES, relax.TensorType((max(1, len(self.layers)),), "float32"))
        rz = GatedSimulation(plan, info["ranges"], info["qconfig"], info.get("full_ranges"), gates, index)
        self.vm = host_vm(plan.with_main(rz.rebuild(plan.func, extra_params=[gates])))
        self.simulated = set(rz.realized)  # layers a rule kept in float have no effect on their gate
        self.inputs, self.outputs = state.model.inputs, [o.name for o in state.model.outputs]

    def run(self, inputs: dict, gates) -> dict:
        import tvm

        n, batch = len(next(iter(inputs.values()))), self.inputs[0].shape[0]
        g = np.ones(max(1, len(self.layers)), np.float32)
        g[: len(self.layers)] = np.asarray(gates, np.float32)
        gt = tvm.runtime.tensor(g)
        runs = []
        for i in range(0, n, batch):
            args = [tvm.runtime.tensor(np.ascontiguousarray(inputs[s.name][i:i + batch])) for s in self.inputs]
            runs.append([o.numpy() for o in flatten_tensors(self.vm["main"](*args, gt))])
        return {name: np.concatenate([r[k] for r in runs]) for k, name in enumerate(self.outputs)}


def leave_one_out(state, eval_inputs: dict, score, candidates, progress: bool = True) -> tuple[float, dict]:
    """(score of the all-quantized simulation, {layer name: score with that layer alone in float}).

    state -- a compile state after realize (plan, ranges, qconfig in quant_info)
    score -- fn({output name: array}) -> float, the budget metric against the fp32 reference
    candidates -- names of the layers to measure
    """
    base, result = leave_out(state, eval_inputs, score, [(c,) for c in candidates], progress=progress)
    return base, {group[0]: value for group, value in result.items()}


def leave_out(state, eval_inputs: dict, score, groups, progress: bool = True, model=None) -> tuple[float, dict]:
    """(score of the all-quantized simulation, {group: score with every layer of that group in float}).

    groups -- tuples of layer names; a group naming a layer the simulation does not quantize is skipped
    model  -- a GatedModel of `state` already built (else one is built)
    """
    model = model or GatedModel(state)
    ones = np.ones(len(model.layers), np.float32)
    base = score(model.run(eval_inputs, ones))
    groups = [tuple(g) for g in groups if all(name in model.simulated for name in g)]
    it = groups
    if progress:
        from tqdm import tqdm

        it = tqdm(groups, desc="layer sensitivity", unit="run", leave=False)
    result = {}
    for group in it:
        g = ones.copy()
        for name in group:
            g[model.layers.index(name)] = 0.0
        result[group] = score(model.run(eval_inputs, g))
    return base, result


def shared_tensor_groups(plan, candidates) -> list[tuple]:
    """For each candidate layer whose output other candidates read (directly or through exact layers
    such as reshape/transpose, which run on the codes they are given): (producer, *consumers).

    Such a tensor is quantized twice on the way, at the producer's output and at each consumer's input,
    and its codes keep the coarser grid of the two: an int8 producer feeding an int16 consumer hands
    it int8 codes, and an int16 producer feeding an int8 consumer is requantized to int8. Moving one
    side alone (or leaving it alone in float) therefore removes nothing of that tensor's error; only
    moving the group does. Leave-one-out cannot see it, so the group is measured as one."""
    wanted = set(candidates)
    producer = {layer.out: layer for layer in plan.layers}
    consumers: dict = {}
    for layer in plan.layers:
        if layer.name not in wanted:
            continue
        for v in layer.inputs:
            src = producer.get(v)
            while src is not None and src.rule.kind == "exact" and src.inputs:
                src = producer.get(src.inputs[0])
            if src is not None and src.name in wanted and src.name != layer.name:
                names = consumers.setdefault(src.name, [])
                if layer.name not in names:
                    names.append(layer.name)
    return [(name, *consumers[name]) for name in candidates if name in consumers]
