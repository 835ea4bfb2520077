"""PyTorch frontend: a ``torch.export`` program (or a saved ``.pt2``) -> Model.

Uses TVM's ``tvm.relax.frontend.torch.from_exported_program`` with the weights
bound as constants, so ``main`` takes exactly the model's user inputs.
"""

from __future__ import annotations

import hashlib
import os
import re

from ..errors import ModelLoadError, UnsupportedOpError
from ..model import Model, TensorSpec
from ._common import output_specs_of

TORCH_HINT = "pip install 'qcompile[torch]'"

# TVM 0.27 reports unconverted aten ops with
#   assert not missing, f"Unsupported function types {missing}"
_UNSUPPORTED_RE = re.compile(r"Unsupported function types \[(.*?)\]")


def load_torch(program, input_names: list[str] | None = None, source: str = "<torch.export>") -> Model:
    """Import a ``torch.export.ExportedProgram`` (or a path to a ``.pt2`` file) as a Model.

    program     -- an ExportedProgram, or a path to a file saved with ``torch.export.save``
    input_names -- names for ``main``'s inputs, in order; default: the program's user input names
    source      -- description used in messages when ``program`` is not a path

    The program must have been exported with static input shapes.
    """
    torch = _import_torch()
    sha256 = ""
    if isinstance(program, (str, os.PathLike)):
        source = os.fspath(program)
        program, sha256 = _load_pt2(torch, source)
    if not isinstance(program, torch.export.ExportedProgram):
        raise ModelLoadError(
            f"{source}: expected a torch.export.ExportedProgram or a .pt2 path, got {type(program).__name__}"
        )
    mod = _convert_program(program, source)
    names = _resolve_input_names(program, input_names, source)
    inputs = _input_specs(mod, names, source)
    mod = _rename_main_params(mod, names)
    outputs = output_specs_of(mod, _user_output_names(program), source)
    return Model(mod=mod, inputs=inputs, outputs=outputs, source=source, format="torch", sha256=sha256)


def _import_torch():
    """Import torch lazily; explain how to install it when it is missing."""
    try:
        import torch
        import torch.export  # noqa: F401  (older torch needs the explicit submodule import)
    except ImportError as err:
        raise ModelLoadError(f"the torch frontend needs PyTorch: {TORCH_HINT}") from err
    return torch


def _load_pt2(torch, path: str):
    """Read a ``torch.export.save`` archive; return (ExportedProgram, sha256 of the file)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise ModelLoadError(f"{path}: cannot read model file: {err.strerror or err}") from err
    try:
        program = torch.export.load(path)
    except Exception as err:  # torch raises many kinds on a bad archive
        raise ModelLoadError(f"{path}: not a torch.export (.pt2) archive: {_first_line(err)}") from err
    return program, hashlib.sha256(data).hexdigest()


def _convert_program(program, source: str):
    """Run TVM's ExportedProgram importer; turn its failures into qcompile errors."""
    try:
        from tvm.relax.frontend.torch import from_exported_program
    except ImportError as err:
        raise ModelLoadError(f"{source}: TVM's torch frontend cannot be imported: {err}") from err
    try:
        return from_exported_program(program, keep_params_as_input=False, unwrap_unit_return_tuple=True)
    except (AssertionError, KeyError) as err:
        ops = _unsupported_ops(err)
        if ops:
            raise UnsupportedOpError(
                ", ".join(ops), source=source, hint="TVM's torch frontend has no conversion for it"
            ) from err
        raise ModelLoadError(
            f"{source}: TVM could not import the program: {type(err).__name__}: {_first_line(err)}"
        ) from err
    except Exception as err:
        raise ModelLoadError(
            f"{source}: TVM could not import the program: {type(err).__name__}: {_first_line(err)}"
        ) from err


def _unsupported_ops(err: Exception) -> list[str]:
    """Names of the ops TVM could not convert, read from its error.

    Normally TVM asserts "Unsupported function types [...]" up front; under ``python -O``
    that assert is skipped and the converter-map lookup in ``_translate_fx_graph`` fails
    with ``KeyError(func_name)`` instead (recognised from the failing frame).
    """
    if isinstance(err, KeyError):
        key = err.args[0] if err.args else None
        frame = _innermost_frame(err)
        in_lookup = frame is not None and frame.f_code.co_name == "_translate_fx_graph"
        return [str(key)] if in_lookup and frame.f_locals.get("func_name") == key else []
    return _unsupported_ops_from_message(str(err))


def _innermost_frame(err: BaseException):
    """The frame that raised `err`, or None."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame if tb is not None else None


def _unsupported_ops_from_message(message: str) -> list[str]:
    """Op names (e.g. ``'mystery.default'``) from TVM's 'Unsupported function types [...]' message."""
    match = _UNSUPPORTED_RE.search(message)
    if not match:
        return []
    return sorted(name.strip().strip("'\"") for name in match.group(1).split(",") if name.strip())


def _resolve_input_names(program, input_names, source: str) -> list[str]:
    """The caller's names if given (checked against the input count), else the program's."""
    program_names = [str(n) for n in program.graph_signature.user_inputs]
    if input_names is None:
        return program_names
    names = [str(n) for n in input_names]
    if len(names) != len(program_names):
        raise ModelLoadError(
            f"{source}: {len(names)} input names given but the program has "
            f"{len(program_names)} inputs ({', '.join(program_names)})"
        )
    if len(set(names)) != len(names):
        raise ModelLoadError(f"{source}: input names must be unique, got {names}")
    return names


def _user_output_names(program) -> list[str]:
    """Names of the program's user-visible outputs, in return order."""
    return [str(n) for n in program.graph_signature.user_outputs]


def _rename_main_params(mod, names: list[str]):
    """Give ``main``'s parameters the chosen input names (a no-op when they already match)."""
    from tvm import relax

    func = mod["main"]
    if [p.name for p in func.params] == names:
        return mod
    new_params = [relax.Var(n, p.ty) for p, n in zip(func.params, names)]
    # bind_params substitutes the old vars in the body (and drops them from the signature).
    body_only = func.bind_params(dict(zip(func.params, new_params)))
    mod["main"] = relax.Function(new_params, body_only.body, func.ret_ty, func.is_pure, func.attrs, func.span)
    return mod


def _static_shape(shape_expr, what: str, source: str) -> tuple[int, ...]:
    """Convert a Relax shape to ints, or explain that it must be static."""
    from tvm.tirx import IntImm

    values = getattr(shape_expr, "values", None)
    if values is None:
        raise ModelLoadError(f"{source}: {what} has an unknown rank")
    if not all(isinstance(dim, IntImm) for dim in values):
        raise ModelLoadError(
            f"{source}: {what} has a dynamic shape {shape_expr}; export with static shapes "
            "(no dynamic_shapes=...)"
        )
    return tuple(int(dim.value) for dim in values)


def _tensor_spec(name: str, ty, what: str, source: str) -> TensorSpec:
    """TensorSpec from a Relax TensorType with a static shape."""
    from tvm import relax

    if not isinstance(ty, relax.TensorType):
        raise ModelLoadError(f"{source}: {what} is not a tensor (type {ty})")
    return TensorSpec(name, _static_shape(ty.shape, what, source), str(ty.dtype))


def _input_specs(mod, names: list[str], source: str) -> list[TensorSpec]:
    """One TensorSpec per ``main`` parameter; fails if weights were left as parameters."""
    params = list(mod["main"].params)
    if len(params) != len(names):
        raise ModelLoadError(
            f"{source}: main has {len(params)} parameters but the program has {len(names)} user inputs"
        )
    return [_tensor_spec(n, p.ty, f"input '{n}'", source) for n, p in zip(names, params)]


def _first_line(err: BaseException) -> str:
    """The first non-empty line of an exception message (TVM messages can be long)."""
    for line in str(err).splitlines():
        if line.strip():
            return line.strip()
    return type(err).__name__
