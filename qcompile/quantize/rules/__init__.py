"""The rule registry: one small class per op kind, registered by Relax op name.

A rule answers two questions, like a quantizer class in ONNX Runtime's registry:
  * ``match(binding, graph)``  (annotate): does this call start a quantized layer?
    Which later bindings does it absorb (bias add, ReLU/clip), which inputs are
    activations, which are constant weights?  Returns a Layer, or None.
  * ``keep_float(layer, rz)``  (realize, optional): given the calibrated ranges, a reason
    this layer must stay in fp32 (integer arithmetic would erase its information), or None.
  * ``realize(layer, rz)``  (realize): emit the integer computation through the
    realizer ``rz`` and return the output QTensor, or None to leave the layer in fp32.

Adding an op is one new module in this package that defines a Rule subclass with
``@register("relax.op.name")``; ``load_rules()`` imports every module here.

An activation Relax has no single op for (HardSwish arrives as ``x * clip(x + 3, 0, 6) / 6``) is a
rule registered with ``@register_pattern("relax.op.name")`` for the op its decomposed form starts
with: annotate tries it before that op's own rule, which takes the op when the pattern does not.
"""

from __future__ import annotations

import importlib
import pkgutil

from ..layer import Layer

RULES: dict[str, "Rule"] = {}
PATTERNS: dict[str, list["Rule"]] = {}
_LOADED = False


def register(*op_names: str):
    def wrap(cls):
        for name in op_names:
            RULES[name] = cls()
        return cls

    return wrap


def register_pattern(*op_names: str):
    def wrap(cls):
        for name in op_names:
            PATTERNS.setdefault(name, []).append(cls())
        return cls

    return wrap


def load_rules() -> dict[str, "Rule"]:
    """Import every rule module of this package (each registers itself)."""
    global _LOADED
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    _LOADED = True
    return RULES


def rule_for(op_name: str):
    """The rule annotate asks to match a call of `op_name`: its pattern rules, then its own rule."""
    if not _LOADED:
        load_rules()
    rules = PATTERNS.get(op_name, []) + ([RULES[op_name]] if op_name in RULES else [])
    return rules[0] if len(rules) == 1 else _FirstMatch(rules) if rules else None


class _FirstMatch:
    """Several rules for one op: the first that matches makes the layer (and realizes it)."""

    def __init__(self, rules):
        self.rules = rules

    def match(self, binding, graph):
        for rule in self.rules:
            layer = rule.match(binding, graph)
            if layer is not None:
                return layer
        return None


class Rule:
    """Base class. ``kind`` is "compute" (needs scales, requantizes) or "exact"
    (runs on the integer codes unchanged, e.g. max-pool, reshape).

    ``needs_integer_reader``: the layer is worth running in integer only inside an integer region (an
    add or multiply gains nothing when its output goes straight back to float).

    ``float_output``: when no integer layer reads its output, the layer writes ``float(acc) * scale``
    instead of requantized codes (``Layer.attrs["float_out"]``, set by annotate): no output range to
    calibrate, no requantize + dequantize, and no output rounding (a transformer's FFN output, a
    detection head before its sigmoid)."""

    kind = "compute"
    needs_integer_reader = False  # True: left in fp32 when no integer layer reads its output (annotate)
    float_output = False          # True: may write its accumulator as float when no integer layer reads it

    def match(self, binding, graph):
        return Layer.single(binding, self, graph)

    def keep_float(self, layer, rz) -> str | None:
        return None

    def realize(self, layer, rz):
        raise NotImplementedError
