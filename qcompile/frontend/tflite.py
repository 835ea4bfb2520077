"""TFLite frontend: a ``.tflite`` flatbuffer -> Model.

Uses TVM's ``tvm.relax.frontend.tflite.from_tflite``; the flatbuffer is parsed
with the ``tflite`` package. What this adds on top of TVM's importer:
  * missing files, non-TFLite bytes and a missing ``tflite`` package are reported
    as ModelLoadError naming the file (never a flatbuffers/TVM traceback);
  * dynamic input dimensions (-1 in the shape signature) are fixed from
    ``input_shapes`` (else set to 1), so the whole graph is static;
  * unsupported operators are reported as UnsupportedOpError naming the op.
"""

from __future__ import annotations

import hashlib
import os
import sys

from ..errors import ModelLoadError, UnsupportedOpError
from ..model import Model, TensorSpec
from ._common import output_specs_of, parse_input_shapes

TFLITE_HINT = "pip install 'qcompile[tflite]'"
_FILE_IDENTIFIER = b"TFL3"  # bytes 4..8 of every TFLite flatbuffer
_EXACT_FLOAT_CASTS = {("float16", "float32"), ("float16", "float64"), ("float32", "float64")}


def load_tflite(path, input_shapes: dict[str, tuple] | None = None) -> Model:
    """Import a TFLite model file.

    path         -- a ``.tflite`` file
    input_shapes -- {input name: shape} fixing dynamic (-1) dimensions, e.g. {"input": (1, 128, 128, 3)};
                    the CLI's ["name:1x128x128x3"] form is accepted too
    """
    source = os.fspath(path)
    data = _read_bytes(source)
    tflite = _import_tflite()
    model = _parse_flatbuffer(tflite, data, source)
    subgraph = model.Subgraphs(0)
    inputs, defaulted = _input_specs(tflite, subgraph, parse_input_shapes(input_shapes), source)
    mod = _convert(model, inputs, _operator_names(tflite, model, subgraph), source)
    outputs = output_specs_of(mod, _output_names(subgraph), source)
    meta = {"defaulted_dims": defaulted, "tflite_schema_version": int(model.Version())}
    return Model(mod=mod, inputs=inputs, outputs=outputs, source=source, format="tflite",
                 sha256=hashlib.sha256(data).hexdigest(), meta=meta)


def _read_bytes(path: str) -> bytes:
    """The file's bytes, or a ModelLoadError naming the file."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: no such model file") from None
    except OSError as err:
        raise ModelLoadError(f"{path}: cannot read model file: {err.strerror or err}") from None


def _import_tflite():
    """Import the ``tflite`` flatbuffer package lazily; explain how to install it when missing."""
    try:
        import tflite
    except ImportError as err:
        raise ModelLoadError(f"the TFLite frontend needs the 'tflite' package: {TFLITE_HINT}") from err
    return tflite


def _parse_flatbuffer(tflite, data: bytes, path: str):
    """A ``tflite.Model`` with at least one subgraph, or a ModelLoadError for anything else."""
    if len(data) < 8 or data[4:8] != _FILE_IDENTIFIER:
        raise ModelLoadError(f"{path}: not a TFLite model (no 'TFL3' flatbuffer identifier)")
    try:
        model = tflite.Model.GetRootAsModel(data, 0)
        if model.SubgraphsLength() < 1:
            raise ValueError("the model has no subgraph")
        model.Subgraphs(0).TensorsLength()  # touch the main subgraph so truncation shows up here
    except Exception as err:  # flatbuffers raises struct.error/IndexError/... on corrupt data
        raise ModelLoadError(f"{path}: corrupt TFLite flatbuffer: {err}") from None
    return model


def _tensor_dtype(tflite, tensor_type: int, what: str, path: str) -> str:
    """numpy-style dtype name ('float32', 'int8', ...) of a TFLite TensorType enum value."""
    names = {v: k.lower() for k, v in vars(tflite.TensorType).items() if not k.startswith("_")}
    name = names.get(tensor_type)
    if name is None or name in ("string", "complex64", "complex128", "resource", "variant"):
        raise ModelLoadError(f"{path}: {what} has unsupported TFLite type {name or tensor_type}")
    return name


def _declared_shape(tensor) -> tuple[int, ...]:
    """The tensor's shape with -1 for dynamic dims (shape_signature when present, else shape)."""
    if tensor.ShapeSignatureLength() > 0:
        return tuple(int(d) for d in tensor.ShapeSignatureAsNumpy())
    if tensor.ShapeLength() > 0:
        return tuple(int(d) for d in tensor.ShapeAsNumpy())
    return ()


def _fix_shape(name: str, declared: tuple[int, ...], override, path: str) -> tuple[tuple[int, ...], list[int]]:
    """Apply a user shape to the dynamic dims; default the remaining ones to 1.

    Returns (static shape, indices of dims that were set to 1 by default).
    """
    if override is None:
        free = [k for k, d in enumerate(declared) if d < 0]
        return tuple(1 if d < 0 else d for d in declared), free
    override = tuple(int(d) for d in override)
    if len(override) != len(declared) or any(
        d >= 0 and d != o for d, o in zip(declared, override)
    ):
        raise ModelLoadError(
            f"{path}: input shape {override} for '{name}' does not match the model's {declared} "
            "(only dynamic (-1) dimensions can be set)"
        )
    if any(d <= 0 for d in override):
        raise ModelLoadError(f"{path}: input shape {override} for '{name}' must be positive")
    return override, []


def _input_specs(tflite, subgraph, user_shapes: dict, path: str):
    """Static TensorSpecs for the main subgraph's inputs, plus the dims defaulted to 1."""
    indices = [int(subgraph.Inputs(k)) for k in range(subgraph.InputsLength())]
    tensors = [subgraph.Tensors(i) for i in indices]
    names = [_tensor_name(subgraph, i) for i in indices]
    unknown = sorted(set(user_shapes) - set(names))
    if unknown:
        raise ModelLoadError(f"{path}: input shapes given for unknown input(s) {unknown}; the model's inputs are {names}")
    specs, defaulted = [], {}
    for name, tensor in zip(names, tensors):
        shape, free = _fix_shape(name, _declared_shape(tensor), user_shapes.get(name), path)
        if free:
            defaulted[name] = free
        specs.append(TensorSpec(name, shape, _tensor_dtype(tflite, tensor.Type(), f"input '{name}'", path)))
    if defaulted:
        print(f"qcompile: {path}: dynamic dims set to 1: "
              + ", ".join(f"{n} axes {a}" for n, a in defaulted.items())
              + " (fix them with --input-shape NAME:DIMS)", file=sys.stderr)
    return specs, defaulted


def _tensor_name(subgraph, index: int) -> str:
    """A tensor's name, as TVM's TFLite frontend names it."""
    name = subgraph.Tensors(index).Name()
    return name.decode("utf-8") if name is not None else f"tvmgen_tensor_{index}"


def _output_names(subgraph) -> list[str]:
    """Names of the main subgraph's outputs, in order."""
    return [_tensor_name(subgraph, int(subgraph.Outputs(k))) for k in range(subgraph.OutputsLength())]


def _operator_names(tflite, model, subgraph) -> dict[str, bool]:
    """The subgraph's distinct operators: {name: is_custom}, e.g. {'CONV_2D': False, 'MyOp': True}."""
    builtin = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    names = {}
    for k in range(subgraph.OperatorsLength()):
        code = model.OperatorCodes(subgraph.Operators(k).OpcodeIndex())
        # TFLite >= 2.4 stores the code in BuiltinCode; old files only in the 8-bit deprecated field.
        op = max(code.DeprecatedBuiltinCode(), code.BuiltinCode())
        if op == tflite.BuiltinOperator.CUSTOM:
            custom = code.CustomCode()
            names.setdefault(custom.decode("utf-8", "replace") if custom else "CUSTOM", True)
        else:
            names.setdefault(builtin.get(op, f"BUILTIN_{op}"), False)
    return names


def _convert(model, inputs: list[TensorSpec], op_names: dict[str, bool], path: str):
    """Run TVM's TFLite importer at the fixed input shapes; turn failures into qcompile errors."""
    import tvm
    from tvm.relax.frontend.tflite import from_tflite

    shapes = {t.name: t.shape for t in inputs}
    dtypes = {t.name: t.dtype for t in inputs}
    try:
        mod = from_tflite(model, shape_dict=shapes, dtype_dict=dtypes)
    except (tvm.error.OpNotImplemented, NotImplementedError) as err:
        raise _unsupported_op_error(err, op_names, path) from None
    except Exception as err:  # noqa: BLE001 - any importer failure is reported against the model
        raise _import_error(err, path) from err
    return _fold_constant_casts(_drop_params_attr(mod))


def _unsupported_op_error(err: Exception, op_names: dict[str, bool], path: str) -> UnsupportedOpError:
    """UnsupportedOpError naming the model's ops that TVM's message mentions (or the op it failed in)."""
    message = str(err)
    mentioned = [op for op in op_names if f"'{op}'" in message or f" {op} " in f" {message} "]
    if not mentioned and "Custom operators" in message:
        mentioned = [op for op, custom in op_names.items() if custom and op != "TFLite_Detection_PostProcess"]
    failing = _failing_op(err)
    if not mentioned and failing is not None:
        mentioned = [failing[1]]
    node = failing[2] if failing is not None and len(mentioned) == 1 else ""
    return UnsupportedOpError(", ".join(mentioned) or "unknown", node_name=node, source=path, hint=_first_line(err))


def _import_error(err: Exception, path: str) -> ModelLoadError:
    """A ModelLoadError naming the TFLite operator TVM's importer failed on, when known."""
    failing = _failing_op(err)
    where = ""
    if failing is not None:
        index, op, output = failing
        where = f" at operator #{index} {op}" + (f" (output '{output}')" if output else "")
    return ModelLoadError(f"{path}: TVM's TFLite frontend failed{where}: {type(err).__name__}: {_first_line(err)}")


def _failing_op(err: BaseException):
    """(operator index, op name, first output tensor name) being converted when `err` was raised.

    Read from the frames of TVM's ``OperatorConverter.convert_op_to_relax`` loop; None if not found.
    """
    tb, found = err.__traceback__, None
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "convert_op_to_relax" and "op_code_str" in frame.f_locals:
            local = frame.f_locals
            outputs = local.get("output_tensors") or []
            output = outputs[0].tensor.Name() if outputs else None
            found = (local.get("op_idx"), local["op_code_str"], output.decode("utf-8", "replace") if output else "")
        tb = tb.tb_next
    return found


def _drop_params_attr(mod):
    """Remove the ``params`` attribute TVM attaches to main: a second copy of the bound constants."""
    func = mod["main"]
    if func.attrs is not None and "params" in func.attrs:
        mod["main"] = func.without_attr("params")
    return mod


def _fold_constant_casts(mod):
    """Replace ``astype(constant)`` by the cast constant, computed with numpy.

    TFLite models with float16 weights import as DEQUANTIZE -> ``astype(fp16 const, "float32")``.
    Only widening float casts are folded, so the result is exact. Later passes then see the
    float32 weights directly, and FoldConstant no longer compiles one LLVM kernel per weight
    (about 10 s of CPU for BlazeFace).
    """
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    astype = tvm.ir.Op.get("relax.astype")
    constant = type(relax.const(0.0))  # relax.Constant is tvm.ir.expr.GenericConst in TVM 0.27

    @mutator
    class _CastFolder(PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not (call.op.same_as(astype) and isinstance(call.args[0], constant)):
                return call
            source_dtype, dtype = str(call.args[0].ty.dtype), str(call.attrs.dtype)
            if (source_dtype, dtype) not in _EXACT_FLOAT_CASTS:
                return call
            return relax.const(call.args[0].value.numpy().astype(dtype), dtype)

    mod["main"] = _CastFolder().visit_expr(mod["main"])
    return mod


def _first_line(err: BaseException) -> str:
    """The first non-empty line of an exception message (TVM messages can be long)."""
    for line in str(err).splitlines():
        if line.strip():
            return line.strip()
    return type(err).__name__
