"""Annotate: decide what gets quantized, as a plan over the bindings of ``main``.

The pass walks the dataflow block of ``main`` once. For each call whose op has a
rule (see rules/), the rule may open a *layer*: the call plus the bindings it
absorbs (a conv2d takes its bias add and its ReLU/clip). The plan records, per
layer, its activation inputs, constant weights, precision (int8 / int16 / fp32,
from the qconfig's keep_* patterns and mixed-precision choices), and the tensors
whose ranges calibration must observe.

Layers are named ``<op>_<k>`` (conv2d_0, matmul_2, add_1, ...) in graph order;
those names are what ``keep_fp32`` / ``keep_int16`` and the reports use.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .layer import Layer  # noqa: F401  (the rules and realize use it through here too)
from .qconfig import matches
from .rules import rule_for


class Graph:
    """Read-only view of main's bindings for rules: producers, users, constants."""

    def __init__(self, func):
        from tvm import relax

        self.func = func
        self.bindings = [b for blk in func.body.blocks for b in blk.bindings]
        self.value = {b.var: b.value for b in self.bindings}
        self.users = Counter()
        for b in self.bindings:
            for v in relax.analysis.free_vars(b.value):
                self.users[v] += 1
        body = func.body.body
        for v in relax.analysis.free_vars(body):
            self.users[v] += 1
        self.params = list(func.params)
        self._next = {b.var: self.bindings[i + 1] if i + 1 < len(self.bindings) else None
                      for i, b in enumerate(self.bindings)}

    def is_tensor_var(self, e) -> bool:
        from tvm import relax

        return isinstance(e, relax.Var) and isinstance(e.ty, relax.TensorType) and str(e.ty.dtype).startswith("float")

    def sole_user(self, var):
        """The binding that is the only use of `var`, if it is the very next binding."""
        from tvm import relax

        if self.users[var] != 1:
            return None
        nxt = self._next.get(var)
        if nxt is None or var not in relax.analysis.free_vars(nxt.value):
            return None
        return nxt

    @staticmethod
    def const(e):
        """numpy value of a relax.Constant, else None."""
        import tvm

        if isinstance(e, tvm.ir.expr.Constant):
            return e.value.numpy()
        return None


@dataclass
class QuantPlan:
    layers: list
    observe: list              # vars (float tensors) calibration must observe
    func: object
    mod: object = None         # the module main belongs to (its other functions are kept)
    kept_float: dict = field(default_factory=dict)  # layer name -> why annotate left it in fp32
    input_means: dict = field(default_factory=dict)  # var -> per-channel mean over calibration (bias correction)

    def with_main(self, func):
        """A copy of the module with `func` as main (helper functions main calls stay)."""
        import tvm

        if self.mod is None:
            return tvm.IRModule({"main": func})
        mod = self.mod.clone() if hasattr(self.mod, "clone") else tvm.IRModule(dict(self.mod.functions))
        mod["main"] = func
        return mod

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def summary(self) -> dict:
        return {"layers": len(self.layers),
                "precision": dict(Counter(layer.precision for layer in self.layers)),
                "ops": dict(Counter(layer.op for layer in self.layers))}


def annotate(mod, qconfig, target=None, precision_overrides: dict | None = None,
             source_names: dict | None = None, float_vars=()) -> QuantPlan:
    """Build the quantization plan for mod["main"].

    source_names -- {relax var name: [names in the source model]}: keep_* patterns match these too.
    float_vars -- bindings that stay float and make no layer (smoothing's ``x * (1/s)``: the activation is
                  quantized after it, on its flattened channels, not before)."""
    func = mod["main"]
    graph = Graph(func)
    taken, layers, counts = set(float_vars), [], Counter()
    for b in graph.bindings:
        if b.var in taken or not _is_call(b.value):
            continue
        rule = rule_for(b.value.op.name)
        layer = rule.match(b, graph) if rule is not None else None
        if layer is None:
            continue
        short = layer.op.rsplit(".", 1)[-1]
        layer.name = f"{short}_{counts[short]}"
        counts[short] += 1
        layer.aliases = [n for b in layer.bindings for n in (source_names or {}).get(b.var.name, [])]
        layer.precision = _precision(layer, qconfig, precision_overrides or {})
        taken.update(x.var for x in layer.bindings)
        layers.append(layer)
    kept = {}
    if getattr(qconfig, "float_outputs", False) and getattr(target, "accelerator", None) is None:
        kept = _float_sinks(layers)
        _float_outputs(layers)
    observe = _observed(layers, graph)
    return QuantPlan(layers=layers, observe=observe, func=func, mod=mod, kept_float=kept)


def _is_call(e) -> bool:
    import tvm
    from tvm import relax

    return isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op)


def _precision(layer, qconfig, overrides: dict) -> str:
    if layer.name in overrides:
        return overrides[layer.name]
    if qconfig.is_dynamic and layer.op != "relax.matmul":
        return "fp32"  # dynamic quantization covers matmul-heavy models; the rest needs static ranges
    names = [layer.name] + layer.aliases
    if any(matches(qconfig.keep_fp32, layer.op, n) for n in names):
        return "fp32"
    if any(matches(qconfig.keep_int16, layer.op, n) for n in names):
        return "int16"
    return qconfig.precision


def _float_sinks(layers) -> dict:
    """Layers whose rule is only worth it inside an integer region (``Rule.needs_integer_reader``: an add,
    a multiply) and whose output no integer layer reads, moved to fp32: in integer they would cost a
    quantize of each float input and a dequantize of the output, and lose precision for nothing (a
    transformer's residual add feeding LayerNorm). An exact layer (reshape, ReLU) reads in integer only
    when its own output is read in integer. Returns {layer name: reason}."""
    readers = _readers(layers)
    kept: dict = {}
    changed = True
    while changed:
        changed = False
        for layer in reversed(layers):
            if layer.precision == "fp32" or not getattr(layer.rule, "needs_integer_reader", False):
                continue
            if not _read_in_integer(layer.out, readers, set()):
                layer.precision = "fp32"
                kept[layer.name] = "no integer layer reads its output"
                changed = True
    return kept


def _float_outputs(layers):
    """Mark the layers whose rule can write float and whose output no integer layer reads."""
    readers = _readers(layers)
    for layer in layers:
        if layer.precision != "fp32" and getattr(layer.rule, "float_output", False) \
                and not _read_in_integer(layer.out, readers, set()):
            layer.attrs["float_out"] = True


def _readers(layers) -> dict:
    """{var: the layers that read it as an activation input}."""
    readers: dict = {}
    for layer in layers:
        for v in layer.inputs:
            readers.setdefault(v, []).append(layer)
    return readers


def _read_in_integer(var, readers: dict, seen: set) -> bool:
    """Whether a quantized compute layer reads `var`, directly or through exact layers (reshape, ReLU)."""
    for user in readers.get(var, []):
        if user.precision == "fp32" or user in seen:
            continue
        if getattr(user.rule, "kind", "compute") != "exact":
            return True
        seen.add(user)
        if _read_in_integer(user.out, readers, seen):
            return True
    return False


def _observed(layers, graph) -> list:
    """Every activation input and output of a quantized layer, once, in graph order."""
    seen, out = set(), []
    for layer in layers:
        if layer.precision == "fp32":
            continue
        outs = [] if layer.attrs.get("float_out") else [layer.out]
        for v in list(layer.inputs) + outs:
            if graph.is_tensor_var(v) and v not in seen:
                seen.add(v)
                out.append(v)
    return out
