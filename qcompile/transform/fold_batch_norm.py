"""FoldBatchNorm: BatchNormalization and per-channel scale/shift after a conv2d or matmul go into its
constant weight and one bias add.

Models exported from Caffe2, Keras or TF keep ``conv -> BatchNormalization`` (and sometimes a
following per-channel ``Mul``/``Add``). Left alone, DecomposeOpsForInference makes the BN a float
subtract/divide/multiply/add island after every conv: quantization then takes the per-channel
weight ranges of the unscaled weights, and every conv leaves the integer domain for its BN.

The chain after the anchor is any run of
  * ``relax.nn.batch_norm(y, gamma, beta, mean, var)`` whose tuple's only user is ``[0]``
    (inference: the moving statistics, as DecomposeOpsForInference reads every batch_norm);
  * ``add`` / ``multiply`` (either operand order), ``subtract`` / ``divide`` (``y`` first) with a float
    constant of the channels, shaped along the channel axis: (1,C,1,1) or (C,1,1) after a conv2d,
    (1,N) or (N,) after a matmul;
each step being the only user of the previous one. It is an affine map per channel, ``s*y + t``:
the weight's output channel ``o`` is multiplied by ``s[o]`` (grouped and depthwise convs alike:
OIHW's O is the output channel) and ``t`` becomes one ``add`` after the conv (a matmul's weight
``[K, N]`` is scaled per column). A chain that is already one bias add is left as it is. A
batch_norm with no conv/matmul to fold into (DenseNet's pre-activation ``concat -> BN -> ReLU ->
conv``, or a conv whose output is read elsewhere too) becomes ``x * s + t`` with its chain: one
per-channel multiply and add, which quantize/rules/channel_affine.py runs on integers. Scalar
constants are not folded: ``add(y, 3)`` may open a HardSwish/HardSigmoid, which the quantizer reads
as one activation.

The result is the same function up to float rounding (the scale is applied to the weights before
the sums instead of after).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import Constant
from tvm.relax.expr_functor import PyExprMutator, mutator

from .rewrite import is_op, rewrite_relax_functions, use_counts

_AFFINE = {"relax.add", "relax.subtract", "relax.multiply", "relax.divide"}


class _Fold:
    """One anchor (conv2d/matmul; None: a batch_norm chain on `input`) with the chain it absorbs: the new
    weight (or the scale), the bias, the chain's last var, the vars the fold makes dead."""

    def __init__(self, anchor, weight: np.ndarray, bias: np.ndarray, bias_shape, end_var, steps: int, dead: set,
                 input=None):
        self.anchor, self.weight, self.bias, self.bias_shape = anchor, weight, bias, bias_shape
        self.end_var, self.steps, self.dead, self.input = end_var, steps, dead, input


def plan_folds(func) -> tuple[dict, set]:
    """{chain end var: _Fold} and the set of vars the folds make dead (anchors and inner steps)."""
    users, user_of = use_counts(func)
    folds, dead = {}, set()
    for b in (b for blk in func.body.blocks for b in blk.bindings):
        if b.var in dead:
            continue
        fold = _anchored_chain(b, users, user_of) or _batch_norm_chain(b, users, user_of)
        if fold is not None:
            folds[fold.end_var] = fold
            dead.update(fold.dead)
    return folds, dead


def _anchor(call):
    """(weight, channel count, channel axis of the output, output ndim) of a foldable anchor, else None."""
    if not is_op(call, "relax.nn.conv2d", "relax.matmul") or not isinstance(call.args[1], Constant):
        return None
    weight = call.args[1].value.numpy()
    if weight.dtype != np.float32 or not isinstance(call.ty, relax.TensorType) or call.ty.dtype != "float32":
        return None
    ndim = _ndim(call)
    if ndim is None:
        return None
    if call.op.name == "relax.nn.conv2d":
        a = call.attrs
        if (a.data_layout, a.kernel_layout, a.out_layout) != ("NCHW", "OIHW", "NCHW") or weight.ndim != 4:
            return None
        return weight, weight.shape[0], 1, ndim
    if weight.ndim != 2 or ndim < 1:
        return None
    return weight, weight.shape[1], ndim - 1, ndim


def _ndim(e):
    shape = getattr(getattr(e, "ty", None), "shape", None)
    values = getattr(shape, "values", None)
    return len(values) if values is not None else None


def _anchored_chain(binding, users, user_of):
    found = _anchor(binding.value)
    if found is None:
        return None
    weight, channels, axis, ndim = found
    walk = _walk(binding.var, None, users, user_of, channels, axis, ndim)
    if walk is None:
        return None
    scale, shift, end, inner, steps = walk
    if binding.value.op.name == "relax.nn.conv2d":
        new_w = weight.astype(np.float64) * scale.reshape(-1, 1, 1, 1)
    else:
        new_w = weight.astype(np.float64) * scale.reshape(1, -1)
    return _Fold(binding.value, new_w.astype(np.float32), shift, _bias_shape(channels, axis, ndim), end, steps,
                 inner)


def _batch_norm_chain(binding, users, user_of):
    """A batch_norm with nothing to fold into (DenseNet's concat -> BN -> ReLU -> conv): its chain as one
    per-channel multiply and add, which the quantizer's channel affine rule takes."""
    value = binding.value
    if not is_op(value, "relax.nn.batch_norm") or _ndim(value.args[0]) is None:
        return None
    ndim, channels = _ndim(value.args[0]), int(value.args[1].ty.shape.values[0])
    walk = _walk(value.args[0], binding, users, user_of, channels, int(value.attrs.axis) % ndim, ndim)
    if walk is None:
        return None
    scale, shift, end, inner, steps = walk
    bias_shape = _bias_shape(channels, int(value.attrs.axis) % ndim, ndim)
    return _Fold(None, scale.reshape(bias_shape).astype(np.float32), shift, bias_shape, end, steps, inner,
                 input=value.args[0])


def _bias_shape(channels, axis, ndim):
    shape = [1] * ndim
    shape[axis] = channels
    return shape


def _walk(cur, first, users, user_of, channels, axis, ndim):
    """Follow the affine chain from `cur` (through `first`, a batch_norm reading it, if given):
    (scale, shift, end var, vars made dead, step count), or None if there is nothing to fold."""
    scale, shift = np.ones(channels), np.zeros(channels)
    inner, kinds = set(), []
    while first is not None or (users[cur] == 1 and cur in user_of):
        nxt = first if first is not None else user_of[cur]
        step = _affine_step(nxt.value, cur, channels, axis, ndim) if first is None else None
        if step is None:
            step = _batch_norm_step(nxt, users, user_of, channels, axis, ndim)
            if step is None:
                break
            inner.add(nxt.var)  # the batch_norm tuple; nxt becomes its [0]
            (s, t), nxt = step, user_of[nxt.var]
            kinds.append("batch_norm")
        else:
            s, t = step
            kinds.append(nxt.value.op.name)
        scale, shift = scale * s, shift * s + t
        if first is None:
            inner.add(cur)
        first, cur = None, nxt.var
    if not kinds or kinds == ["relax.add"]:
        return None
    return scale, shift.astype(np.float32), cur, inner, len(kinds)


def _affine_step(value, cur, channels, axis, ndim):
    """(s, t) with value == s*cur + t per channel, for add/subtract/multiply/divide by a channel constant."""
    if not is_op(value, *_AFFINE):
        return None
    a, b = value.args
    op = value.op.name
    if b.same_as(cur) and op in ("relax.add", "relax.multiply"):
        a, b = b, a
    if not a.same_as(cur) or not isinstance(b, Constant):
        return None
    c = _per_channel(b.value.numpy(), channels, axis, ndim)
    if c is None:
        return None
    one, zero = np.ones(channels), np.zeros(channels)
    if op == "relax.add":
        return one, c
    if op == "relax.subtract":
        return one, -c
    if op == "relax.multiply":
        return c, zero
    if np.any(c == 0):
        return None
    return 1.0 / c, zero


def _batch_norm_step(binding, users, user_of, channels, axis, ndim):
    """(s, t) of `y = batch_norm(cur, ...)[0]` when the tuple's only user is that [0]."""
    value = binding.value
    if not is_op(value, "relax.nn.batch_norm") or int(value.attrs.axis) % ndim != axis:
        return None
    params = [a.value.numpy() if isinstance(a, Constant) else None for a in value.args[1:]]
    if any(p is None or p.shape != (channels,) or p.dtype != np.float32 for p in params):
        return None
    item = user_of.get(binding.var)
    if users[binding.var] != 1 or item is None or not isinstance(item.value, relax.TupleGetItem) \
            or item.value.index != 0:
        return None
    gamma, beta, mean, var = (p.astype(np.float64) for p in params)
    s = (gamma if value.attrs.scale else 1.0) / np.sqrt(var + float(value.attrs.epsilon))
    t = (beta if value.attrs.center else 0.0) - mean * s
    return s, t


def _per_channel(value: np.ndarray, channels: int, axis: int, ndim: int):
    """The constant as a float64 vector over the channels, if it varies only along `axis` and has
    exactly `channels` values (a scalar is not a channel constant unless there is one channel)."""
    if value.dtype.kind != "f" or value.ndim > ndim or value.size != channels:
        return None
    shape = [1] * ndim
    shape[axis] = channels
    try:
        if np.broadcast_shapes(value.shape, tuple(shape)) != tuple(shape):
            return None
    except ValueError:
        return None
    return np.broadcast_to(value, tuple(shape)).reshape(-1).astype(np.float64)


@mutator
class _Folder(PyExprMutator):
    def __init__(self, mod):
        super().__init__(mod)
        self.folds, self.dead = {}, set()
        self.count = self.steps = 0

    def visit_function_(self, func):
        self.folds, self.dead = plan_folds(func)
        return super().visit_function_(func)

    def visit_var_binding_(self, binding):
        if binding.var in self.dead:
            return
        fold = self.folds.get(binding.var)
        if fold is None:
            super().visit_var_binding_(binding)
            return
        call = fold.anchor
        if call is None:  # a batch_norm chain on its own: x * scale
            anchor = self.builder_.emit(relax.op.multiply(self.visit_expr(fold.input), relax.const(fold.weight)),
                                        name_hint="scaled")
        else:
            anchor = self.builder_.emit(relax.Call(call.op, [self.visit_expr(call.args[0]), relax.const(fold.weight)],
                                                   call.attrs, call.ty_args), name_hint="folded")
        value = relax.op.add(anchor, relax.const(fold.bias.reshape(fold.bias_shape)))
        self.builder_.emit_normalized(relax.VarBinding(binding.var, self.builder_.normalize(value)))
        self.count += 1
        self.steps += fold.steps


@tvm.transform.module_pass(opt_level=0, name="FoldBatchNorm")
class FoldBatchNorm:
    """Fold batch_norm and per-channel scale/shift chains into the conv2d/matmul before them.
    `last_count` says how many anchors the last run folded, `last_steps` how many ops they absorbed."""

    def __init__(self):
        self.last_count = self.last_steps = 0

    def transform_module(self, mod, _ctx):
        folder = _Folder(mod)
        new = rewrite_relax_functions(mod, folder)
        self.last_count, self.last_steps = folder.count, folder.steps
        return new
