"""The gated simulation behind measured per-layer sensitivity (mixed precision's ranking)."""

import numpy as np

import qcompile
from qcompile import zoo
from qcompile.quantize.mixed import _metric
from qcompile.quantize.qconfig import QConfig
from qcompile.quantize.sensitivity import GatedModel, leave_one_out


def _quantized_state(**kw):
    pipe = qcompile.Pipeline(qconfig=QConfig(calib_method="entropy", **kw), progress=False)
    art = pipe.run(zoo.DIGITS_MODEL, calib=zoo.digits_calib())
    return pipe.state, art


def test_gates_switch_between_simulation_and_fp32():
    """All gates on: the simulate-mode model; all off: the fp32 model; one off changes only a little."""
    state, _ = _quantized_state()
    inputs, _ = zoo.digits_test()
    inputs = {k: v[:32] for k, v in inputs.items()}
    model = GatedModel(state)
    assert model.layers and all(name in model.simulated for name in model.layers)
    ones = np.ones(len(model.layers))
    _, sim = _quantized_state(mode="simulate")
    np.testing.assert_allclose(model.run(inputs, ones)["logits"], sim.run(inputs)["logits"], rtol=1e-5, atol=1e-5)
    fp32 = qcompile.compile(zoo.DIGITS_MODEL).run(inputs)["logits"]
    np.testing.assert_allclose(model.run(inputs, 0 * ones)["logits"], fp32, rtol=1e-5, atol=1e-5)
    quantized = model.run(inputs, ones)["logits"]
    assert np.abs(quantized - fp32).max() > 1e-3  # the gates do something


def test_leave_one_out_measures_each_layer_with_the_metric():
    state, _ = _quantized_state()
    inputs, _ = zoo.digits_test()
    inputs = {k: v[:32] for k, v in inputs.items()}
    reference = qcompile.compile(zoo.DIGITS_MODEL).run(inputs)
    score = lambda out: _metric("cosine", reference, out, None)  # noqa: E731
    base, alone = leave_one_out(state, inputs, score, ["conv2d_0", "conv2d_1", "matmul_0", "no_such_layer"],
                                progress=False)
    assert set(alone) == {"conv2d_0", "conv2d_1", "matmul_0"}
    assert base < 1.0
    # floating one layer mostly helps, never by more than floating all of them
    assert max(alone.values()) > base and all(v <= 1.0 + 1e-9 for v in alone.values())
