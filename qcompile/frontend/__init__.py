"""Frontends: a model file (or object) -> qcompile.model.Model.

``load(src, input_shapes)`` picks the frontend from the file extension or object type.
"""

from __future__ import annotations

import os

from ..errors import ModelLoadError
from ..model import Model

_EXTENSIONS = {".onnx": "onnx", ".tflite": "tflite", ".pt2": "torch"}


def load(src, input_shapes=None, format: str | None = None) -> Model:
    """Import a model from a path (.onnx, .tflite, .pt2), an onnx.ModelProto, or a torch ExportedProgram."""
    if isinstance(src, Model):
        return src
    kind = format or _guess_format(src)
    if kind == "onnx":
        from .onnx import load_onnx
        return load_onnx(src, input_shapes)
    if kind == "tflite":
        from .tflite import load_tflite
        return load_tflite(src, input_shapes)
    if kind == "torch":
        from .torch import load_torch
        return load_torch(src)
    raise ModelLoadError(f"unknown model format '{kind}'; use one of onnx, tflite, torch")


def _guess_format(src) -> str:
    kind = type(src).__name__
    if kind == "ModelProto":
        return "onnx"
    if kind == "ExportedProgram":
        return "torch"
    if isinstance(src, (bytes, bytearray)):
        return "onnx"
    path = os.fspath(src)
    ext = os.path.splitext(path)[1].lower()
    if ext in _EXTENSIONS:
        return _EXTENSIONS[ext]
    if not os.path.exists(path):
        raise ModelLoadError(f"{path}: no such model file")
    raise ModelLoadError(f"{path}: cannot tell the model format from the extension '{ext}'; "
                         f"expected one of {sorted(_EXTENSIONS)}")
