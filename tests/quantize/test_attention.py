"""Transformer-style blocks: dense + attention matmuls, static and dynamic quantization."""

import re

import numpy as np
import pytest
from tvm import relax

import qcompile
from qcompile.quantize.qconfig import QConfig
from .test_realize import relax_model

RNG = np.random.default_rng(3)
T, D = 8, 16


def attention_model():
    wq, wk, wv, wo = (RNG.standard_normal((D, D)).astype(np.float32) / 4 for _ in range(4))
    bo = RNG.standard_normal(D).astype(np.float32) / 4

    def build(bb, x):
        q = bb.emit(relax.op.matmul(x, relax.const(wq)))
        k = bb.emit(relax.op.matmul(x, relax.const(wk)))
        v = bb.emit(relax.op.matmul(x, relax.const(wv)))
        kt = bb.emit(relax.op.permute_dims(k, [0, 2, 1]))
        s = bb.emit(relax.op.matmul(q, kt))
        p = bb.emit(relax.op.nn.softmax(s, axis=-1))
        o = bb.emit(relax.op.matmul(p, v))
        y = bb.emit(relax.op.matmul(o, relax.const(wo)))
        y = bb.emit(relax.op.add(y, relax.const(bo)))
        return bb.emit(relax.op.add(y, x))

    return relax_model([("x", (1, T, D))], build)


def cosine(a, b):
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).mean())


@pytest.mark.parametrize("method", ["minmax", "dynamic"])
def test_attention_block(method):
    model = attention_model()
    calib = {"x": RNG.standard_normal((16, T, D)).astype(np.float32)}
    pipe = qcompile.Pipeline(qconfig=QConfig(calib_method=method))
    art = pipe.run(model, calib=None if method == "dynamic" else calib)
    realized = pipe.state.quant_info["realized"]
    matmuls = [n for n in realized if n.startswith("matmul")]
    assert len(matmuls) == 6  # q, k, v, scores, context, output projection
    if method == "dynamic":
        assert set(realized.values()) == {"dynamic-int8"}
    x = RNG.standard_normal((4, T, D)).astype(np.float32)
    ref = np.concatenate([qcompile.compile(model).run({"x": x[i:i + 1]})["y"] for i in range(4)])
    got = np.concatenate([art.run({"x": x[i:i + 1]})["y"] for i in range(4)])
    assert cosine(got, ref) >= 0.99


def masked_scores_model():
    """BERT-style padding mask: scores + mask * -FLT_MAX, then softmax (as the ONNX exports of
    Hugging Face models write it)."""
    wq, wk = (RNG.standard_normal((D, D)).astype(np.float32) / 4 for _ in range(2))
    neg = float(np.finfo(np.float32).min)

    def build(bb, x, pad):
        q = bb.emit(relax.op.matmul(x, relax.const(wq)))
        k = bb.emit(relax.op.matmul(x, relax.const(wk)))
        s = bb.emit(relax.op.matmul(q, relax.op.permute_dims(k, [0, 2, 1])))
        m = bb.emit(relax.op.multiply(pad, relax.const(neg, "float32")))
        return bb.emit(relax.op.nn.softmax(bb.emit(relax.op.add(s, m)), axis=-1))

    return relax_model([("x", (1, T, D)), ("pad", (1, 1, T))], build)


def test_padding_mask_add_stays_fp32():
    """An int8 add would put the scores and -FLT_MAX on one grid and round every score to one code;
    the add rule keeps it in fp32 and says why, and the softmax still matches fp32."""
    model = masked_scores_model()
    pad = np.zeros((16, 1, T), np.float32)
    pad[:, :, T - 3:] = 1.0  # the last 3 positions are padding
    calib = {"x": RNG.standard_normal((16, T, D)).astype(np.float32), "pad": pad}
    # float_outputs off: else the add stays fp32 anyway, since only the float softmax reads it
    pipe = qcompile.Pipeline(qconfig=QConfig(calib_method="minmax", float_outputs=False, bias_correction=False))
    art = pipe.run(model, calib=calib)
    x = RNG.standard_normal((1, T, D)).astype(np.float32)
    ref = qcompile.compile(model).run({"x": x, "pad": pad[:1]})["y"]
    got = art.run({"x": x, "pad": pad[:1]})["y"]
    assert np.all(got[..., T - 3:] == 0)
    assert np.abs(got - ref).max() < 0.05
    kept = pipe.state.quant_info["summary"]["kept_fp32_by_rule"]
    (name,) = [n for n in kept if n.startswith("add")]
    assert re.search(r"steps of the u?int8 output grid", kept[name])  # uint8 on targets with u8 activations
    assert name not in pipe.state.quant_info["realized"]
