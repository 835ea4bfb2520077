"""transform.ChannelsLast: the tensors between packed integer convs stay NHWC (no transpose between two
integer layers), and no output bit changes.

The module is what realize + PackConvWeights make of a small int8 CNN, on shapes off the 16-lane blocks
(24 -> 40 -> 20/28 channels, 11 x 9 pixels): conv + requantize epilogue, max pool, two 1x1 convs, a residual
add of their codes, a concat along channels, a zero-point pad, a last conv and its global sum, and a depthwise
conv. Its outputs are compared bit for bit with
numpy (qcompile.quantize.reference and fixed_point).
"""

import numpy as np
import pytest

import qcompile
from qcompile.cpu_features import host_cpu_flags
from qcompile.intrin.pack_conv import PackConvWeights
from qcompile.quantize import fixed_point, reference
from qcompile.schedule import default as ds
from qcompile.schedule import records
from qcompile.transform import ChannelsLast

FLAGS = host_cpu_flags() or set()
RUNS = {"x86_64": "avx2" in FLAGS, "x86_vnni": {"avx512f", "avx512_vnni"} <= FLAGS}


@pytest.fixture(autouse=True)
def no_committed_schedules(monkeypatch, tmp_path):
    monkeypatch.setattr(records, "SCHEDULES_DIR", str(tmp_path / "no-schedules"))


def _requant_params(rng, channels):
    mult, shift = fixed_point.quantize_multiplier(rng.uniform(2e-4, 4e-3, channels))
    bias = rng.integers(-3000, 3000, channels).astype(np.int32)
    return bias, mult, shift


class Net:
    """Weights and requantize parameters, a Relax builder of the realized graph, and its numpy twin."""

    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        self.w = {"a": rng.integers(-128, 128, (40, 24, 3, 3)).astype(np.int8),
                  "b": rng.integers(-128, 128, (20, 40, 1, 1)).astype(np.int8),
                  "c": rng.integers(-128, 128, (20, 40, 1, 1)).astype(np.int8),
                  "d": rng.integers(-128, 128, (28, 40, 3, 3)).astype(np.int8),
                  "e": rng.integers(-128, 128, (40, 1, 3, 3)).astype(np.int8)}  # depthwise
        self.q = {k: _requant_params(rng, w.shape[0]) for k, w in self.w.items()}
        self.add_mult = fixed_point.quantize_multiplier(0.7)

    # ---------------------------------------------------------------- Relax, as realize emits it
    def module(self, shape):
        from tvm import relax

        bb = relax.BlockBuilder()
        x = relax.Var("x", relax.TensorType(shape, "uint8"))
        with bb.function("main", [x]):
            with bb.dataflow():
                a = self._conv(bb, x, "a", padding=1)
                p = bb.emit(relax.op.nn.max_pool2d(a, pool_size=[3, 3], strides=[2, 2], padding=[1, 1, 1, 1]))
                b, c = self._conv(bb, p, "b"), self._conv(bb, p, "c")
                s = self._add(bb, b, c)
                cat = bb.emit(relax.op.concat([s, b], axis=1))
                # realize pads with the zero point itself (3 here) before a conv whose input has one
                cat = bb.emit(relax.op.nn.pad(cat, [0, 0, 0, 0, 1, 2, 0, 1], pad_value=3.0))  # asymmetric
                d = self._conv(bb, cat, "d")
                g = bb.emit(relax.op.sum(relax.op.astype(d, "int64"), axis=[2, 3]))  # global pooling's window sum
                e = self._conv(bb, p, "e", padding=1, groups=40)
                out = bb.emit_output(relax.Tuple([d, s, g, e]))
            bb.emit_func_output(out)
        return bb.get()

    def _conv(self, bb, x, key, padding=0, groups=1):
        from tvm import relax

        bias, mult, shift = self.q[key]
        c = lambda v, dt: relax.const(np.asarray(v).reshape(1, -1, 1, 1).astype(dt), dt)  # noqa: E731
        acc = bb.emit(relax.op.nn.conv2d(x, relax.const(self.w[key]), padding=padding, groups=groups,
                                         out_dtype="int32"))
        acc = bb.emit(relax.op.add(acc, c(bias, "int32")))
        y = bb.emit(relax.op.astype(acc, "int64"))
        y = bb.emit(relax.op.multiply(y, c(mult, "int64")))
        y = bb.emit(relax.op.add(y, c(np.left_shift(np.int64(1), shift - 1), "int64")))
        y = bb.emit(relax.op.right_shift(y, c(shift, "int64")))
        y = bb.emit(relax.op.add(y, relax.const(np.int64(3), "int64")))
        y = bb.emit(relax.op.clip(y, relax.prim_value(3), relax.prim_value(255)))  # a fused ReLU at zp 3
        return bb.emit(relax.op.astype(y, "uint8"))

    def _add(self, bb, u, v):
        """The integer add rule's shape: both inputs centered, summed in int64, rescaled, clamped."""
        from tvm import relax

        mult, shift = self.add_mult
        i64 = lambda e: relax.op.subtract(relax.op.astype(e, "int64"), relax.const(np.int64(3), "int64"))  # noqa: E731
        y = bb.emit(relax.op.add(i64(u), i64(v)))
        y = bb.emit(relax.op.multiply(y, relax.const(np.int64(mult), "int64")))
        y = bb.emit(relax.op.add(y, relax.const(np.int64(1) << (shift - 1), "int64")))
        y = bb.emit(relax.op.right_shift(y, relax.const(np.int64(shift), "int64")))
        y = bb.emit(relax.op.clip(y, relax.prim_value(0), relax.prim_value(255)))
        return bb.emit(relax.op.astype(y, "uint8"))

    # ---------------------------------------------------------------- numpy
    def expected(self, x):
        def conv(v, key, padding=0, groups=1):
            bias, mult, shift = self.q[key]
            acc = reference.qconv2d(v, 0, self.w[key], 0, padding=padding, groups=groups, acc_dtype="int32")
            acc = acc + bias.reshape(1, -1, 1, 1)
            return fixed_point.requantize(acc, mult, shift, 3, 3, 255, axis=1).astype(np.uint8)

        a = conv(x, "a", padding=1)
        padded = np.pad(a, ((0, 0), (0, 0), (1, 1), (1, 1)))  # uint8: 0 is the max pool's neutral value
        h, w = (a.shape[2] - 1) // 2 + 1, (a.shape[3] - 1) // 2 + 1
        p = np.max([padded[:, :, i:i + 2 * h:2, j:j + 2 * w:2] for i in range(3) for j in range(3)], axis=0)
        b, c = conv(p, "b"), conv(p, "c")
        mult, shift = self.add_mult
        s = fixed_point.requantize(b.astype(np.int64) - 3 + c.astype(np.int64) - 3, mult, shift, 0, 0, 255)
        s = s.astype(np.uint8)
        cat = np.pad(np.concatenate([s, b], axis=1), ((0, 0), (0, 0), (1, 2), (0, 1)), constant_values=3)
        d = conv(cat, "d")
        return d, s, d.astype(np.int64).sum(axis=(2, 3)), conv(p, "e", padding=1, groups=40)


def lower(mod, target_name, channels_last=True):
    import tvm

    from qcompile.build import lower_passes

    spec = qcompile.load_target(target_name)
    target = spec.tvm()
    with target, tvm.transform.PassContext(opt_level=3):
        packed = PackConvWeights(spec.intrinsics)(mod)
        if channels_last:
            packed = ChannelsLast()(packed)
        mod = packed
        for p in lower_passes(target):
            mod = p(mod)
        mod = ds.apply_default_schedule(mod, target)
    return packed, mod, target


def ops_of(mod) -> list[str]:
    from tvm import relax

    names = []
    for b in mod["main"].body.blocks[0].bindings:
        if isinstance(b.value, relax.Call) and hasattr(b.value.op, "name"):
            names.append(b.value.op.name)
    return names


@pytest.mark.parametrize("target_name", ["x86_vnni", "x86_64"])
def test_no_transpose_between_integer_layers(target_name):
    """4 packed convs, a depthwise conv, a pool, an add, a concat, a pad and a global sum: one NCHW -> NHWC
    transpose at the entry and one NHWC -> NCHW per NCHW output, none in between; all of them run NHWC."""
    net = Net()
    packed, _, _ = lower(net.module((1, 24, 11, 9)), target_name)
    ops = ops_of(packed)
    assert ops.count("relax.call_tir") == 4, ops
    assert ops.count("relax.permute_dims") == 4, ops  # entry, and one per NCHW output (d, s, e)
    calls = [b.value for b in packed["main"].body.blocks[0].bindings if hasattr(b.value, "op")]
    (pool,) = [c for c in calls if "max_pool2d" in str(c.op)]
    assert pool.attrs.layout == "NHWC"
    (cat,) = [c for c in calls if "concat" in str(c.op)]
    assert int(cat.attrs.axis) == 3
    (pad,) = [c for c in calls if "nn.pad" in str(c.op) and float(c.attrs.pad_value) == 3.0]
    assert [int(p) for p in pad.attrs.pad_width] == [0, 0, 1, 2, 0, 1, 0, 0]
    (total,) = [c for c in calls if c.op.name == "relax.sum"]
    assert [int(a) for a in total.attrs.axis] == [1, 2]
    (depthwise,) = [c for c in calls if c.op.name == "relax.nn.conv2d"]  # the others are packed
    assert (depthwise.attrs.data_layout, depthwise.attrs.kernel_layout) == ("NHWC", "HWIO")
    without, _, _ = lower(net.module((1, 24, 11, 9)), target_name, channels_last=False)
    assert ops_of(without).count("relax.permute_dims") == 8  # what it was: 4 in, 4 out (the depthwise reads NCHW)


@pytest.mark.parametrize("target_name", ["x86_vnni", "x86_64"])
@pytest.mark.parametrize("shape", [(1, 24, 11, 9), (1, 24, 16, 16)])
def test_channels_last_outputs_are_bit_exact(target_name, shape):
    import tvm
    from tvm import relax

    from qcompile.build import build_passes

    if not RUNS[target_name]:
        pytest.skip(f"this CPU cannot run {target_name} code")
    net = Net(seed=sum(shape))
    x = np.random.default_rng(1).integers(0, 256, shape).astype(np.uint8)
    _, mod, target = lower(net.module(shape), target_name)
    ex = tvm.compile(mod, target, relax_pipeline=tvm.transform.Sequential(build_passes(target)))
    d, s, g, e = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x))
    want_d, want_s, want_g, want_e = net.expected(x)
    np.testing.assert_array_equal(e.numpy(), want_e)
    assert 0 < np.count_nonzero(want_d != 3) and np.unique(want_s).size > 10  # not all clamped
    np.testing.assert_array_equal(s.numpy(), want_s)
    np.testing.assert_array_equal(d.numpy(), want_d)
    np.testing.assert_array_equal(g.numpy(), want_g)
