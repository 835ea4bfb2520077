"""Helpers shared by the frontends: input-shape parsing and output signatures."""

from __future__ import annotations

from ..errors import ModelLoadError
from ..model import TensorSpec


def parse_input_shapes(shapes) -> dict[str, tuple[int, ...]]:
    """Accept {"x": (1, 3, 8, 8)} or ["x:1x3x8x8", "y:1,4"] (the CLI's --input-shape form)."""
    if not shapes:
        return {}
    if isinstance(shapes, dict):
        return {str(k): tuple(int(d) for d in v) for k, v in shapes.items()}
    out = {}
    for item in shapes:
        name, sep, dims = str(item).rpartition(":")
        try:
            if not sep or not name:
                raise ValueError
            shape = tuple(int(d) for d in dims.replace(",", "x").split("x") if d != "")
            if not shape or any(d <= 0 for d in shape):
                raise ValueError
        except ValueError:
            raise ModelLoadError(f"bad --input-shape '{item}': expected NAME:DIMS such as 'input:1x3x224x224'") from None
        out[name] = shape
    return out


def output_specs_of(mod, names: list[str], source: str) -> list[TensorSpec]:
    """Output TensorSpecs from the return type of ``mod["main"]``, named by `names`."""
    from tvm import relax

    ret = mod["main"].ret_ty
    fields = list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]
    if len(names) != len(fields):
        names = [f"output_{i}" for i in range(len(fields))]
    specs = []
    for name, ty in zip(names, fields):
        if not isinstance(ty, relax.TensorType) or ty.shape is None:
            raise ModelLoadError(f"{source}: output '{name}' has no static tensor type ({ty}); "
                                 "fix the input shapes with --input-shape so every output is static")
        try:
            shape = tuple(int(d) for d in ty.shape.values)
        except (TypeError, AttributeError):
            raise ModelLoadError(f"{source}: output '{name}' has a dynamic shape {ty.shape}; "
                                 "fix the input shapes with --input-shape") from None
        specs.append(TensorSpec(name, shape, str(ty.dtype)))
    return specs
