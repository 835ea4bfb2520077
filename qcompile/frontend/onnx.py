"""ONNX model (path, bytes or ModelProto) -> Model, through TVM's Relax ONNX frontend.

What this adds on top of ``tvm.relax.frontend.onnx.from_onnx``:
  * every dynamic input dimension gets a static size (the user's ``input_shapes``,
    else 1), so the whole graph is static;
  * unsupported operators are reported up front with op type, node name and opset;
  * when TVM's frontend trips on shape arithmetic (Reshape/ConstantOfShape/Expand
    fed by Shape...), the graph is simplified with onnxslim at the fixed shapes and
    imported again, so users never pre-process models by hand;
  * any other import failure names the ONNX node it happened in.
"""

from __future__ import annotations

import hashlib
import os
import sys

import numpy as np

from ..errors import ModelLoadError, UnsupportedOpError
from ..model import Model, TensorSpec
from ._common import output_specs_of, parse_input_shapes

# ONNX ops TVM converts outside its converter map.
_DIRECT_OPS = {"Constant", "If"}


def load_onnx(src, input_shapes: dict | None = None) -> Model:
    """Import an ONNX model.

    src          -- a path, raw bytes, or an ``onnx.ModelProto``
    input_shapes -- {input name: shape} fixing dynamic dimensions, e.g. {"x": (1, 3, 48, 320)}
    """
    import onnx

    proto, source, digest = _read_model(src)
    opset = _default_opset(proto)
    graph_inputs = _graph_inputs(proto)
    specs, defaulted = _static_input_specs(graph_inputs, parse_input_shapes(input_shapes), source)
    _check_supported_ops(proto, opset, source)
    _set_input_shapes(proto, specs)

    try:
        mod = _from_onnx(proto, specs, opset)
        simplified = False
    except Exception as first_error:  # noqa: BLE001 - retried after simplification, then reported
        proto = _simplify(proto, specs, source, first_error)
        try:
            mod = _from_onnx(proto, specs, opset)
        except Exception as err:  # noqa: BLE001
            raise _import_error(err, source, opset) from None
        simplified = True

    outputs = output_specs_of(mod, [o.name for o in proto.graph.output], source)
    meta = {"opset": opset, "simplified": simplified, "defaulted_dims": defaulted,
            "onnx_ops": sorted({n.op_type for n in proto.graph.node}), "onnx": onnx.__version__,
            # not JSON: used by the QDQ exporter, dropped from metadata.json
            "onnx_proto": proto, "onnx_names": getattr(mod, "onnx_names", {})}
    return Model(mod=mod, inputs=specs, outputs=outputs, source=source, format="onnx",
                 sha256=digest, meta=meta)


def _read_model(src):
    """Return (ModelProto, source description, sha256). Raises ModelLoadError."""
    import onnx
    from google.protobuf.message import DecodeError

    if isinstance(src, onnx.ModelProto):
        data = src.SerializeToString()
        proto, source = onnx.ModelProto(), "<onnx.ModelProto>"
        proto.CopyFrom(src)
        return proto, source, hashlib.sha256(data).hexdigest()
    if isinstance(src, (bytes, bytearray)):
        data, source = bytes(src), "<bytes>"
    else:
        source = os.fspath(src)
        if not os.path.isfile(source):
            raise ModelLoadError(f"{source}: no such model file")
        with open(source, "rb") as f:
            data = f.read()
    try:
        proto = onnx.load_from_string(data)
        if os.path.isfile(source):
            onnx.load_external_data_for_model(proto, os.path.dirname(os.path.abspath(source)))
    except (DecodeError, ValueError, RuntimeError, OSError) as err:
        raise ModelLoadError(f"{source}: not a readable ONNX model ({type(err).__name__}: {err}). "
                             "Check that the file is complete and really is an .onnx file.") from None
    if not proto.graph.node:
        raise ModelLoadError(f"{source}: the ONNX graph is empty (no nodes); the file may be truncated or not ONNX")
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as err:
        first = str(err).strip().splitlines()[0]
        raise ModelLoadError(f"{source}: invalid ONNX model: {first}") from None
    return proto, source, hashlib.sha256(data).hexdigest()


def _default_opset(proto) -> int:
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1


def _graph_inputs(proto):
    """The graph inputs that are real inputs (not initializers)."""
    inits = {i.name for i in proto.graph.initializer}
    return [i for i in proto.graph.input if i.name not in inits]


def _static_input_specs(graph_inputs, user_shapes: dict, source: str):
    """TensorSpecs with every dimension fixed; also returns which dims were defaulted to 1."""
    from onnx import helper

    names = [i.name for i in graph_inputs]
    unknown = sorted(set(user_shapes) - set(names))
    if unknown:
        raise ModelLoadError(f"{source}: --input-shape names unknown input(s) {unknown}; the model's inputs are {names}")
    specs, defaulted = [], {}
    for vi in graph_inputs:
        ttype = vi.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(ttype.elem_type)).name
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in ttype.shape.dim]
        if vi.name in user_shapes:
            shape = tuple(user_shapes[vi.name])
            if len(shape) != len(dims):
                raise ModelLoadError(f"{source}: input '{vi.name}' has rank {len(dims)} "
                                     f"but --input-shape gives {len(shape)} dims {list(shape)}")
            for got, want in zip(shape, dims):
                if want is not None and got != want:
                    raise ModelLoadError(f"{source}: input '{vi.name}' has static shape "
                                         f"{[d if d else '?' for d in dims]}; --input-shape {list(shape)} conflicts")
        else:
            shape = tuple(d if d is not None else 1 for d in dims)
            free = [k for k, d in enumerate(dims) if d is None]
            if free:
                defaulted[vi.name] = free
        specs.append(TensorSpec(vi.name, shape, dtype))
    if defaulted:
        print(f"qcompile: {source}: dynamic dims set to 1: " +
              ", ".join(f"{n} axes {a}" for n, a in defaulted.items()) +
              " (fix them with --input-shape NAME:DIMS)", file=sys.stderr)
    return specs, defaulted


def _set_input_shapes(proto, specs):
    by_name = {s.name: s for s in specs}
    for vi in proto.graph.input:
        if vi.name in by_name:
            dims = vi.type.tensor_type.shape.dim
            for d, size in zip(dims, by_name[vi.name].shape):
                d.Clear()
                d.dim_value = int(size)


def _check_supported_ops(proto, opset: int, source: str):
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    known = set(_get_convert_map()) | _DIRECT_OPS
    for node in proto.graph.node:
        if node.domain not in ("", "ai.onnx"):
            raise UnsupportedOpError(f"{node.domain}.{node.op_type}", node.name, opset, source,
                                     "custom-domain operators have no TVM conversion; export the model with standard ONNX ops")
        if node.op_type not in known:
            hint = _UNSUPPORTED_HINTS.get(node.op_type, "export the model without this op, or replace it with supported ONNX ops")
            raise UnsupportedOpError(node.op_type, node.name, opset, source, hint)


_UNSUPPORTED_HINTS = {
    "LSTM": "TVM's Relax ONNX frontend has no LSTM; export the model with the LSTM unrolled into MatMul/Sigmoid/Tanh ops",
    "QLinearConv": "QOperator models are not supported; export a QDQ model (QuantizeLinear/DequantizeLinear) instead",
    "ConvInteger": "QOperator models are not supported; export a QDQ model (QuantizeLinear/DequantizeLinear) instead",
    "MatMulInteger": "QOperator models are not supported; export a QDQ model (QuantizeLinear/DequantizeLinear) instead",
}


def _from_onnx(proto, specs, opset):
    """TVM's importer, kept as an object so we can read which Relax var each ONNX tensor became."""
    from tvm.relax.frontend.onnx.onnx_frontend import ONNXGraphImporter

    shape_dict = {s.name: list(s.shape) for s in specs}
    dtype_dict = {s.name: s.dtype for s in specs}
    importer = ONNXGraphImporter(shape_dict, dtype_dict, keep_params_in_input=False, sanitize=True)
    mod = importer.from_onnx(proto.graph, opset)
    mod.onnx_names = _relax_to_onnx_names(importer, mod)
    return mod


def _relax_to_onnx_names(importer, mod) -> dict:
    """{relax var name: onnx tensor name}: the importer maps each ONNX tensor to an expression, which
    is either a var or the very call object that normalization bound to a var."""
    from tvm import relax

    bound = {}
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            bound.setdefault(b.value, b.var)
    names = {}
    for onnx_name, expr in importer._nodes.items():
        var = expr if isinstance(expr, relax.Var) else bound.get(expr)
        if var is not None:
            names.setdefault(var.name, onnx_name)
    return names


def _simplify(proto, specs, source, first_error):
    """Fold shape computations at the now-static input shapes (onnxslim), for a second try."""
    try:
        import onnxslim
    except ImportError:
        raise _import_error(first_error, source, _default_opset(proto),
                            extra="installing onnxslim lets qcompile fold dynamic shape code") from None
    shapes = [f"{s.name}:{','.join(map(str, s.shape))}" for s in specs]
    try:
        return onnxslim.slim(proto, input_shapes=shapes)
    except Exception:  # noqa: BLE001 - simplification is best effort; report the original error
        raise _import_error(first_error, source, _default_opset(proto)) from None


def _import_error(err, source, opset, extra=""):
    """A ModelLoadError naming the ONNX node that TVM's frontend failed on."""
    node = _failing_node(err)
    msg = str(err).strip().splitlines()
    short = msg[-1] if msg else type(err).__name__
    where = f" at node '{node.name}' ({node.op_type}, opset {opset})" if node is not None else ""
    text = f"{source}: TVM's ONNX frontend failed{where}: {type(err).__name__}: {short}"
    if extra:
        text += f"; {extra}"
    if node is not None:
        text += ". If an input has dynamic dimensions, fix them with --input-shape NAME:DIMS"
    return ModelLoadError(text)


def _failing_node(err):
    """Find the ONNX node being converted when `err` was raised (from the traceback frames)."""
    tb = err.__traceback__
    node = None
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "_construct_nodes" and "node" in frame.f_locals:
            node = frame.f_locals["node"]
        tb = tb.tb_next
    return node
