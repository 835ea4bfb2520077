"""Real models that ship with qcompile or inside installed PyPI wheels.

Hubs cannot be reached from CI, so tests and benchmarks use:
  * the bundled digits CNN (qcompile/data, trained by examples/train_digits.py);
  * the `light_*` models inside the onnx wheel, whose weights are all ConstantOfShape(0.02):
    ``light_model`` swaps them for seeded random weights so comparisons mean something;
  * models inside other wheels (PP-OCR in rapidocr-onnxruntime, silero-vad, MiniLM, BlazeFace),
    found by ``package_file``.
"""

from __future__ import annotations

import glob
import importlib.util
import os

import numpy as np

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

DIGITS_MODEL = os.path.join(DATA_DIR, "digits_cnn.onnx")
DIGITS_CALIB = os.path.join(DATA_DIR, "digits_calib.npz")
DIGITS_TEST = os.path.join(DATA_DIR, "digits_test.npz")
DIGITS_TEST_LABELS = os.path.join(DATA_DIR, "digits_test_labels.npz")


def digits_test() -> tuple[dict, np.ndarray]:
    """The held-out split: ({"input": float32[N,1,8,8]}, labels int64[N])."""
    with np.load(DIGITS_TEST) as x, np.load(DIGITS_TEST_LABELS) as y:
        return {k: x[k] for k in x.files}, y["label"]


def digits_calib() -> dict:
    with np.load(DIGITS_CALIB) as x:
        return {k: x[k] for k in x.files}


# ----------------------------------------------------------------------------- light models

def light_dir() -> str:
    import onnx

    return os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def light_names() -> list[str]:
    return sorted(os.path.basename(p)[len("light_"):-len(".onnx")]
                  for p in glob.glob(os.path.join(light_dir(), "light_*.onnx")))


def light_model(name: str, seed: int = 0):
    """An onnx wheel `light_<name>` model with seeded random weights, as a ModelProto."""
    import onnx

    path = os.path.join(light_dir(), f"light_{name}.onnx")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such light model; available: {light_names()}")
    return randomize_constant_weights(onnx.load(path), seed)


def randomize_constant_weights(model, seed: int = 0):
    """Replace every ConstantOfShape(static shape) with a seeded random initializer.

    Values follow each tensor's role so activations stay in a sane range through deep nets:
    He-normal conv/gemm weights, positive BN scales and variances, small biases and means.
    """
    from onnx import numpy_helper

    rng = np.random.default_rng(seed)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    roles = _input_roles(graph)
    keep, replaced_shapes = [], set()
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.input and node.input[0] in inits:
            shape = tuple(int(d) for d in numpy_helper.to_array(inits[node.input[0]]))
            value = _random_tensor(shape, roles.get(node.output[0], ("", 0)), rng)
            graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
            replaced_shapes.add(node.input[0])
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    still_used = {i for n in graph.node for i in n.input}
    dead = [i for i in graph.initializer if i.name in replaced_shapes and i.name not in still_used]
    for i in dead:
        graph.initializer.remove(i)
    dead_names = {i.name for i in dead}
    for vi in [vi for vi in graph.input if vi.name in dead_names]:
        graph.input.remove(vi)
    # IR 3 wants every initializer listed as a graph input (saved, the model would not load). From IR 4
    # on, an initializer that is also an input is an overridable input: ORT then neither folds it
    # (e.g. BN into conv) nor quantizes it as a weight. Keep the real inputs only.
    model.ir_version = max(model.ir_version, 4)
    names = {i.name for i in graph.initializer}
    for vi in [vi for vi in graph.input if vi.name in names]:
        graph.input.remove(vi)
    return model


def _input_roles(graph) -> dict:
    roles = {}
    for node in graph.node:
        for k, name in enumerate(node.input):
            roles.setdefault(name, (node.op_type, k))
    return roles


def _random_tensor(shape, role, rng) -> np.ndarray:
    op, idx = role
    if op in ("Conv", "Gemm", "MatMul", "ConvTranspose") and idx == 1 and len(shape) >= 2:
        fan_in = int(np.prod(shape[1:])) if op != "Gemm" else int(min(shape))
        return (rng.standard_normal(shape) * np.sqrt(2.0 / max(fan_in, 1))).astype(np.float32)
    if op == "BatchNormalization" and idx in (1, 4):
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    return (rng.standard_normal(shape) * 0.1).astype(np.float32)


# ----------------------------------------------------------------------------- wheels

def package_dir(package: str) -> str | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def package_file(package: str, pattern: str) -> str | None:
    """First file matching glob `pattern` inside an installed package (an import name, or a
    distribution name for wheels whose folder is not importable), or None."""
    root = package_dir(package) if package.isidentifier() else None
    if root is not None:
        hits = sorted(glob.glob(os.path.join(root, "**", pattern), recursive=True))
        if hits:
            return hits[0]
    return _distribution_file(package, pattern)


def _distribution_file(dist_name: str, pattern: str) -> str | None:
    import fnmatch
    import importlib.metadata as md

    try:
        dist = md.distribution(dist_name)
    except md.PackageNotFoundError:
        return None
    for f in sorted(dist.files or [], key=str):
        if fnmatch.fnmatch(os.path.basename(str(f)), pattern):
            return str(dist.locate_file(f))
    return None
