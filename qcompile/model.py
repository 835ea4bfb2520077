"""Model: what every frontend produces and every later stage consumes.

A Model is a Relax IRModule whose ``main`` function takes the model inputs
(weights are bound as constants), plus the input/output signature.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @staticmethod
    def from_json(d: dict) -> "TensorSpec":
        return TensorSpec(d["name"], tuple(int(s) for s in d["shape"]), d["dtype"])

    def __str__(self) -> str:
        return f"{self.name}: {self.dtype}[{'x'.join(map(str, self.shape))}]"


@dataclass
class Model:
    """A Relax IRModule plus its signature.

    mod      -- tvm.IRModule; ``mod["main"]`` takes one Relax var per entry of ``inputs``
    inputs   -- input specs, in the order of ``main``'s parameters (static shapes)
    outputs  -- output specs, in the order ``main`` returns them
    source   -- where the model came from (path or description), used in messages
    format   -- "onnx" | "torch" | "tflite" | "relax"
    sha256   -- hash of the source bytes (empty when there are none)
    """

    mod: object
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    source: str = "<memory>"
    format: str = "relax"
    sha256: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def replace(self, **kw) -> "Model":
        return dataclasses.replace(self, **kw)

    def random_inputs(self, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        out = {}
        for t in self.inputs:
            if t.dtype.startswith("float"):
                out[t.name] = rng.standard_normal(t.shape).astype(t.dtype)
            else:
                out[t.name] = rng.integers(0, 2, size=t.shape).astype(t.dtype)
        return out
