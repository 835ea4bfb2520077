"""Train the bundled default model of qcompile: a small CNN on sklearn's 8x8 digits.

Run from the repo root (CPU only, 2 threads, well under a minute):

    python examples/train_digits.py                      # writes into qcompile/data/
    python examples/train_digits.py --out-dir /tmp/digits --epochs 40 --seed 0

It writes four files into --out-dir (each one atomically):

    digits_cnn.onnx          opset 13, input "input" float32 [batch,1,8,8] in [0,1], output "logits" [batch,10]
    digits_calib.npz         {"input": float32 [200,1,8,8]}  calibration split (a subset of the training data)
    digits_test.npz          {"input": float32 [N,1,8,8]}    held-out test split (1/5 of the data, stratified)
    digits_test_labels.npz   {"label": int64 [N]}            labels of the test split

The npz keys of the input files are exactly the model's input names. The network is kept
small but touches the ops the quantizer has to handle: Conv+Relu, MaxPool, a depthwise Conv,
a pointwise Conv, a residual Add, GlobalAveragePool, Flatten and Gemm. BatchNorm is used for
training only and folded into the convolutions before export (the ONNX has no BatchNormalization).

Runs are deterministic: the same --seed gives byte-identical files. The script exits non-zero,
and writes nothing, if the PyTorch and onnxruntime predictions on the test split disagree
or the test accuracy is below 0.95.
"""
import argparse, io, os, sys, tempfile, warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

DEFAULT_OUT_DIR = Path(__file__).resolve().parent.parent / "qcompile" / "data"
N_CALIB, BATCH_SIZE, LR, MIN_ACCURACY = 200, 64, 5e-3, 0.95


class ConvBN(nn.Sequential):
  """Conv2d + BatchNorm2d for training; fold_batchnorm() turns it into one Conv2d for export."""
  def __init__(self, c_in, c_out, kernel_size, groups=1):
    super().__init__(nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out))


class DigitsCNN(nn.Module):
  def __init__(self):
    super().__init__()
    self.conv1 = ConvBN(1, 16, 3)
    self.conv2 = ConvBN(16, 32, 3)
    self.depthwise = ConvBN(32, 32, 3, groups=32)
    self.pointwise = ConvBN(32, 32, 1)
    self.fc = nn.Linear(32, 10)

  def forward(self, x):
    x = F.relu(self.conv1(x))
    x = F.relu(self.conv2(x))
    x = F.max_pool2d(x, 2)                                       # 8x8 -> 4x4
    x = F.relu(x + self.pointwise(F.relu(self.depthwise(x))))    # residual block
    x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)            # GlobalAveragePool + Flatten
    return self.fc(x)


def load_splits(seed):
  digits = load_digits()
  images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]   # [1797,1,8,8] in [0,1]
  labels = digits.target.astype(np.int64)
  x_train, x_test, y_train, y_test = train_test_split(images, labels, test_size=0.2, stratify=labels, random_state=seed)
  _, x_calib = train_test_split(x_train, test_size=N_CALIB, stratify=y_train, random_state=seed)
  return x_train, y_train, x_calib, x_test, y_test


def train(model, x_train, y_train, epochs, seed):
  x, y = torch.from_numpy(x_train), torch.from_numpy(y_train)
  opt = torch.optim.Adam(model.parameters(), lr=LR)
  lr_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
  shuffle = torch.Generator().manual_seed(seed)
  model.train()
  for epoch in range(epochs):
    total_loss = 0.0
    for idx in torch.randperm(len(x), generator=shuffle).split(BATCH_SIZE):
      loss = F.cross_entropy(model(x[idx]), y[idx])
      opt.zero_grad()
      loss.backward()
      opt.step()
      total_loss += loss.item() * len(idx)
    lr_schedule.step()
    print(f"epoch {epoch + 1:3d}/{epochs}  loss {total_loss / len(x):.4f}")
  return model.eval()


def fold_batchnorm(model):
  for name, child in model.named_children():
    if isinstance(child, ConvBN): setattr(model, name, fuse_conv_bn_eval(*child))
  return model


@torch.no_grad()
def torch_predict(model, images): return model(torch.from_numpy(images)).argmax(1).numpy()

def ort_predict(onnx_bytes, images):
  session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
  return session.run(["logits"], {"input": images})[0].argmax(1)


def export_onnx(model):
  buf = io.BytesIO()
  warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export")
  torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), buf, input_names=["input"], output_names=["logits"],
                    dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                    opset_version=13, do_constant_folding=True, dynamo=False)
  proto = onnx.load_from_string(buf.getvalue())
  onnx.checker.check_model(proto, full_check=True)
  assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node), "custom op domain in exported graph"
  assert not any(n.op_type == "BatchNormalization" for n in proto.graph.node), "BatchNorm was not folded"
  return proto.SerializeToString()


def write_atomic(path, write):
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      os.fchmod(f.fileno(), 0o644)   # mkstemp creates 0600
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def save_outputs(out_dir, onnx_bytes, x_calib, x_test, y_test):
  out_dir.mkdir(parents=True, exist_ok=True)
  write_atomic(out_dir / "digits_cnn.onnx", lambda f: f.write(onnx_bytes))
  write_atomic(out_dir / "digits_calib.npz", lambda f: np.savez(f, input=x_calib))
  write_atomic(out_dir / "digits_test.npz", lambda f: np.savez(f, input=x_test))
  write_atomic(out_dir / "digits_test_labels.npz", lambda f: np.savez(f, label=y_test))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help=f"default: {DEFAULT_OUT_DIR}")
  parser.add_argument("--epochs", type=int, default=20)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  torch.manual_seed(args.seed)
  torch.set_num_threads(2)
  torch.use_deterministic_algorithms(True)

  x_train, y_train, x_calib, x_test, y_test = load_splits(args.seed)
  print(f"train {len(x_train)}  calib {len(x_calib)} (subset of train)  test {len(x_test)}")
  model = fold_batchnorm(train(DigitsCNN(), x_train, y_train, args.epochs, args.seed))
  onnx_bytes = export_onnx(model)

  torch_pred, ort_pred = torch_predict(model, x_test), ort_predict(onnx_bytes, x_test)
  torch_acc, ort_acc = (torch_pred == y_test).mean(), (ort_pred == y_test).mean()
  print(f"test accuracy  torch {torch_acc:.4f}  onnxruntime {ort_acc:.4f}  ({len(y_test)} samples)")
  if (torch_pred != ort_pred).any(): sys.exit(f"torch and onnxruntime disagree on {(torch_pred != ort_pred).sum()} samples")
  if torch_acc < MIN_ACCURACY: sys.exit(f"test accuracy {torch_acc:.4f} < {MIN_ACCURACY}")

  save_outputs(args.out_dir, onnx_bytes, x_calib, x_test, y_test)
  print(f"wrote digits_cnn.onnx ({len(onnx_bytes)} bytes) and 3 npz files to {args.out_dir}")


if __name__ == "__main__":
  main()
