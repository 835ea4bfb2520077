"""Torch frontend: torch.export programs (and saved .pt2 files) against eager PyTorch."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from qcompile.errors import ModelLoadError, UnsupportedOpError  # noqa: E402
from qcompile.frontend.torch import load_torch  # noqa: E402

TOLERANCE = 1e-4  # max abs diff against eager torch


class ConvNet(torch.nn.Module):
    """conv -> relu -> max-pool -> linear."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, kernel_size=3, padding=1)
        self.pool = torch.nn.MaxPool2d(2)
        self.fc = torch.nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


class TwoInTwoOut(torch.nn.Module):
    """Two inputs, two outputs of different shapes."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(6, 4)

    def forward(self, a, b):
        mixed = torch.tanh(self.proj(a) + b)
        return mixed, (a * 2.0).sum(dim=1)


def export(module: torch.nn.Module, *args: torch.Tensor):
    """torch.export a module in eval mode with fixed (static) shapes."""
    torch.manual_seed(0)
    return torch.export.export(module.eval(), args)


def seeded_inputs(*shapes) -> list[torch.Tensor]:
    """Reproducible float32 inputs."""
    rng = np.random.default_rng(0)
    return [torch.from_numpy(rng.standard_normal(s).astype("float32")) for s in shapes]


def compile_and_run(model, *arrays: np.ndarray) -> list[np.ndarray]:
    """Build model.mod for llvm (with the fusing "zero" pipeline) and run main once."""
    import tvm
    from tvm import relax

    target = tvm.target.Target({"kind": "llvm"})
    with target:
        mod = relax.get_pipeline("zero")(model.mod)
    vm = relax.VirtualMachine(tvm.compile(mod, target), tvm.cpu())
    result = vm["main"](*[tvm.runtime.tensor(a) for a in arrays])
    return [r.numpy() for r in result] if len(model.outputs) > 1 else [result.numpy()]


def assert_matches_eager(model, module, inputs):
    """TVM's outputs equal eager torch's within TOLERANCE, in model.outputs order."""
    with torch.no_grad():
        expected = module(*inputs)
    expected = list(expected) if isinstance(expected, tuple) else [expected]
    actual = compile_and_run(model, *[t.numpy() for t in inputs])
    assert len(actual) == len(expected) == len(model.outputs)
    for spec, got, want in zip(model.outputs, actual, expected):
        assert got.shape == spec.shape == tuple(want.shape)
        assert np.max(np.abs(got - want.numpy())) <= TOLERANCE, spec.name


def test_convnet_matches_eager():
    torch.manual_seed(0)
    module = ConvNet().eval()
    (x,) = seeded_inputs((1, 3, 16, 16))
    model = load_torch(export(module, x))

    assert model.format == "torch" and model.source == "<torch.export>" and model.sha256 == ""
    assert [(t.name, t.shape, t.dtype) for t in model.inputs] == [("x", (1, 3, 16, 16), "float32")]
    assert [(t.shape, t.dtype) for t in model.outputs] == [((1, 10), "float32")]
    assert len(model.mod["main"].params) == 1  # weights are constants, not parameters
    assert_matches_eager(model, module, [x])


def test_two_inputs_two_outputs_in_order():
    torch.manual_seed(0)
    module = TwoInTwoOut().eval()
    a, b = seeded_inputs((2, 6), (2, 4))
    model = load_torch(export(module, a, b), input_names=["lhs", "rhs"])

    assert [(t.name, t.shape) for t in model.inputs] == [("lhs", (2, 6)), ("rhs", (2, 4))]
    assert [p.name for p in model.mod["main"].params] == ["lhs", "rhs"]
    assert [t.shape for t in model.outputs] == [(2, 4), (2,)]
    assert_matches_eager(model, module, [a, b])


def test_pt2_file(tmp_path):
    torch.manual_seed(0)
    module = ConvNet().eval()
    (x,) = seeded_inputs((1, 3, 16, 16))
    path = tmp_path / "convnet.pt2"
    torch.export.save(export(module, x), path)

    model = load_torch(path)
    assert model.source == str(path)
    assert model.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert model.input_names == ["x"]
    assert_matches_eager(model, module, [x])


def test_wrong_number_of_input_names():
    (x,) = seeded_inputs((1, 3, 16, 16))
    with pytest.raises(ModelLoadError, match="1 inputs"):
        load_torch(export(ConvNet(), x), input_names=["a", "b"])


def test_missing_or_bad_pt2_file(tmp_path):
    with pytest.raises(ModelLoadError, match="nope.pt2"):
        load_torch(tmp_path / "nope.pt2")
    garbage = tmp_path / "garbage.pt2"
    garbage.write_bytes(b"not a zip archive" * 10)
    with pytest.raises(ModelLoadError, match="garbage.pt2"):
        load_torch(garbage)


@torch.library.custom_op("qcompile_test::mystery", mutates_args=())
def _mystery(x: torch.Tensor) -> torch.Tensor:
    """An op TVM has never heard of."""
    return x.clone()


@_mystery.register_fake
def _(x):
    return torch.empty_like(x)


class UsesMystery(torch.nn.Module):
    def forward(self, x):
        return torch.ops.qcompile_test.mystery(x) + 1.0


def test_unsupported_op_is_named():
    (x,) = seeded_inputs((2, 3))
    with pytest.raises(UnsupportedOpError, match="mystery") as info:
        load_torch(export(UsesMystery(), x), source="mystery-model")
    assert "mystery" in info.value.op_type
    assert "mystery-model" in str(info.value)
