"""calib_method 'auto' (the default): each tensor's range is the candidate with the smallest error
at its consumer's output. One constructed model holds both patterns that sink a fixed method:

* x1: an outlier channel (+-50) that the consumer's weights ignore, next to small channels that carry
  the output. min/max, percentile and mse keep the outlier in range and round the small channels
  away (mse minimizes the tensor's own error, which the outlier dominates); entropy clips it.
* x2: rare spikes (+-20, 0.1% of values) that carry the output. Entropy clips them away; the others
  keep them.
"""

import numpy as np
import pytest
from tvm import relax

import qcompile
from qcompile.quantize.qconfig import QConfig
from .test_realize import cosine, relax_model

T, D = 16, 32
RNG = np.random.default_rng(0)


def two_pattern_model():
    w1 = np.zeros((D, D), np.float32)
    w1[:D - 1] = RNG.standard_normal((D - 1, D)).astype(np.float32) * 0.5
    w1[D - 1] = 1e-3  # the outlier channel barely matters downstream
    w2 = RNG.standard_normal((D, D)).astype(np.float32) * 0.2

    def build(bb, x1, x2):
        y1 = bb.emit(relax.op.matmul(x1, relax.const(w1)))
        y2 = bb.emit(relax.op.matmul(x2, relax.const(w2)))
        return bb.emit(relax.op.concat([y1, y2], axis=-1))

    return relax_model([("x1", (1, T, D)), ("x2", (1, T, D))], build)


def data(n, seed):
    r = np.random.default_rng(seed)
    x1 = (r.standard_normal((n, T, D)) * 0.1).astype(np.float32)
    x1[..., D - 1] = r.choice([-50.0, 50.0], size=(n, T))
    x2 = (r.standard_normal((n, T, D)) * 0.05).astype(np.float32)
    spikes = r.random((n, T, D)) < 0.001
    x2[spikes] = r.choice([-20.0, 20.0], size=int(spikes.sum()))
    return {"x1": x1, "x2": x2}


@pytest.fixture(scope="module")
def setup():
    model = two_pattern_model()
    ev = data(8, 2)
    fp32 = qcompile.compile(model)
    ref = np.concatenate([fp32.run({k: v[i:i + 1] for k, v in ev.items()})["y"] for i in range(8)])
    return model, data(32, 1), ev, ref


def _quantized(setup, method, **qkw):
    model, calib, ev, ref = setup
    pipe = qcompile.Pipeline(qconfig=QConfig(calib_method=method, safety_net=False, **qkw))  # no net
    art = pipe.run(model, calib=calib)
    got = np.concatenate([art.run({k: v[i:i + 1] for k, v in ev.items()})["y"] for i in range(8)])
    return cosine(got[..., :D], ref[..., :D]), cosine(got[..., D:], ref[..., D:]), pipe.state


def test_auto_is_the_default():
    assert QConfig().calib_method == "auto"


def test_auto_picks_per_tensor_where_fixed_methods_collapse(setup):
    y1, y2, state = _quantized(setup, "auto")
    assert y1 >= 0.95 and y2 >= 0.99, (y1, y2)
    choice = state.quant_info["calib_choice"]
    assert choice["x1"]["chosen"] not in ("mse", "minmax")      # it clips the ignored outlier channel
    assert choice["x2"]["chosen"] != "entropy"                   # it keeps the spikes
    assert set(choice["x1"]["errors"]) >= {"mse", "entropy"}
    assert any(n.startswith("auto calibration chose") for n in state.notes)


@pytest.mark.parametrize("method,collapsed", [("mse", 0), ("entropy", 1)])
def test_fixed_methods_collapse_on_one_of_the_tensors(setup, method, collapsed):
    """The control: without the search (and without smoothing, which also rescues x1, or per-token dynamic
    scales, which rescue x2's spikes), the previous default (mse) loses y1 and entropy loses y2."""
    cos = _quantized(setup, method, smoothing=False, dynamic_tokens=False)[:2]
    assert cos[collapsed] < 0.8, cos
