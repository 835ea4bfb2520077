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
"""

from __future__ import annotations

import importlib
import pkgutil

from ..layer import Layer

RULES: dict[str, "Rule"] = {}
_LOADED = False


def register(*op_names: str):
    def wrap(cls):
        for name in op_names:
            RULES[name] = cls()
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
    if not _LOADED:
        load_rules()
    return RULES.get(op_name)


class Rule:
    """Base class. ``kind`` is "compute" (needs scales, requantizes) or "exact"
    (runs on the integer codes unchanged, e.g. max-pool, reshape)."""

    kind = "compute"

    def match(self, binding, graph):
        return Layer.single(binding, self, graph)

    def keep_float(self, layer, rz) -> str | None:
        return None

    def realize(self, layer, rz):
        raise NotImplementedError
