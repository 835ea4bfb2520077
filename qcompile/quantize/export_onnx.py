"""Export the quantized model as an ONNX QDQ model, to check it in ONNX Runtime.

The original ONNX graph gets QuantizeLinear -> DequantizeLinear pairs on every
activation that enters or leaves an integer layer, with the scales and zero points
realize used, and the weights of integer conv/matmul layers become int8 (or int16)
initializers behind a per-channel DequantizeLinear, holding the same codes as the
compiled kernels. Relax vars are matched to ONNX tensors through the names the
frontend recorded while importing.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .realize import Realizer
from .weights import quantize_weight

_ONNX_DTYPE = {"int8": 3, "uint8": 2, "int16": 5}  # TensorProto.INT8 / UINT8 / INT16


def export_qdq(state, path: str):
    """Write the QDQ ONNX model for a compile state after realize (ONNX sources only)."""
    import onnx
    from onnx import helper, numpy_helper

    model = state.model
    if model.format != "onnx" or "onnx_proto" not in model.meta:
        raise ConfigError("--export-qdq needs an ONNX source model")
    opset = model.meta.get("opset", 0)
    if opset < 13:
        raise ConfigError(f"--export-qdq needs opset >= 13 (per-channel DequantizeLinear); the model has opset {opset}")
    proto = onnx.ModelProto()
    proto.CopyFrom(model.meta["onnx_proto"])
    names = model.meta.get("onnx_names", {})
    plan, qi = state.quant_info["plan"], state.quant_info
    rz = Realizer(plan, qi["ranges"], qi["qconfig"], qi.get("full_ranges"), qi.get("fixed_qparams"))
    realized = qi["realized"]
    graph = proto.graph
    outputs = {o.name for o in graph.output}
    done = set()
    for layer in plan.layers:
        dtype = realized.get(layer.name)
        if dtype not in _ONNX_DTYPE:
            continue
        for var in list(layer.inputs) + ([] if layer.attrs.get("float_out") else [layer.out]):
            onnx_name = names.get(var.name)
            if onnx_name is None or onnx_name in done or onnx_name in outputs:
                continue
            scale, zp = rz.qparams(var, dtype)
            _insert_qdq(graph, onnx_name, scale, zp, dtype)
            done.add(onnx_name)
        if layer.weight is not None:
            _quantize_weight_initializer(graph, layer, names, rz, realized[layer.name])
    onnx.checker.check_model(proto)
    _save_atomic(proto, path)
    return path


def _insert_qdq(graph, name: str, scale: float, zp: int, dtype: str):
    from onnx import helper, numpy_helper

    s = numpy_helper.from_array(np.array(scale, np.float32), f"{name}_qscale")
    z = numpy_helper.from_array(np.array(zp, np.dtype(dtype)), f"{name}_qzp")
    graph.initializer.extend([s, z])
    q, dq = f"{name}_quantized", f"{name}_dequantized"
    for node in graph.node:
        for i, inp in enumerate(node.input):
            if inp == name:
                node.input[i] = dq
    pos = _producer_index(graph, name)
    nodes = [helper.make_node("QuantizeLinear", [name, s.name, z.name], [q], name=f"{name}_QuantizeLinear"),
             helper.make_node("DequantizeLinear", [q, s.name, z.name], [dq], name=f"{name}_DequantizeLinear")]
    for k, n in enumerate(nodes):
        graph.node.insert(pos + 1 + k, n)


def _producer_index(graph, name: str) -> int:
    for i, node in enumerate(graph.node):
        if name in node.output:
            return i
    return -1  # a graph input: insert at the top


def _quantize_weight_initializer(graph, layer, names, rz, dtype):
    """Swap the float weight of the ONNX node behind `layer` for integer codes + DequantizeLinear."""
    from onnx import helper, numpy_helper

    w_dtype = "int16" if dtype == "int16" else rz.qconfig.weight_dtype
    x_name = names.get(layer.inputs[0].name)
    inits = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or not node.input or node.input[0] != f"{x_name}_dequantized":
            continue
        if len(node.input) < 2 or node.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        axis = _weight_axis(node, w)
        scale, codes = quantize_weight(w, w_dtype, rz.qconfig, axis=axis)
        q_init = numpy_helper.from_array(codes.astype(w_dtype), node.input[1] + "_quantized")
        s_init = numpy_helper.from_array(scale.astype(np.float32), node.input[1] + "_scale")
        z_init = numpy_helper.from_array(np.zeros_like(scale, dtype=w_dtype), node.input[1] + "_zp")
        graph.initializer.extend([q_init, s_init, z_init])
        dq_name = node.input[1] + "_dequantized"
        dq = helper.make_node("DequantizeLinear", [q_init.name, s_init.name, z_init.name], [dq_name],
                              name=node.input[1] + "_DequantizeLinear", axis=axis)
        graph.node.insert(list(graph.node).index(node), dq)
        node.input[1] = dq_name
        _correct_bias(graph, node, w, scale, codes, axis, getattr(rz.plan, "input_means", {}).get(layer.inputs[0]))
        return


def _correct_bias(graph, node, w, scale, codes, axis: int, mean):
    """Bias correction as the compiled model has it: the node's bias minus the weight codes' mean output
    error on its calibration input (Conv and Gemm bias inputs, a MatMul's following Add of a constant)."""
    from onnx import numpy_helper

    from . import bias_correction

    if mean is None:
        return
    if node.op_type == "Conv":
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        error = bias_correction.weight_error(w, scale, codes, axis)
        shift = bias_correction.output_shift(error, mean, "relax.nn.conv2d", groups)
    else:  # Gemm / MatMul: the error in [K, N] form
        error = bias_correction.weight_error(w, scale, codes, axis)
        shift = bias_correction.output_shift(error.T if axis == 0 else error, mean, "relax.matmul")
    inits = {i.name: i for i in graph.initializer}
    if node.op_type in ("Conv", "Gemm"):
        old = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] in inits else None
        if len(node.input) > 2 and node.input[2] and old is None:
            return  # a bias computed at run time: nothing to rewrite
        base = np.zeros(shift.shape, np.float32) if old is None else np.broadcast_to(old, shift.shape)
        new = numpy_helper.from_array((base - shift).astype(np.float32), node.name + "_corrected_bias")
        graph.initializer.append(new)
        if len(node.input) > 2:
            node.input[2] = new.name
        else:
            node.input.append(new.name)
        return
    adds = [n for n in graph.node if n.op_type == "Add" and node.output[0] in n.input]
    if len(adds) == 1:
        other = [i for i in adds[0].input if i != node.output[0]]
        if other and other[0] in inits:
            old = numpy_helper.to_array(inits[other[0]])
            if old.size == shift.size:
                new = numpy_helper.from_array((old - shift.reshape(old.shape)).astype(np.float32),
                                              other[0] + "_corrected")
                graph.initializer.append(new)
                adds[0].input[list(adds[0].input).index(other[0])] = new.name


def _weight_axis(node, w: np.ndarray) -> int:
    """The output-channel axis of an ONNX weight (what realize scales per channel)."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return w.ndim - 1  # MatMul: [K, N]


def _save_atomic(proto, path: str):
    import os
    import tempfile

    import onnx

    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".onnx", dir=d)
    os.close(fd)
    try:
        onnx.save(proto, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
