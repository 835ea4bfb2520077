"""Transformer-style blocks: dense + attention matmuls, static and dynamic quantization."""

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
