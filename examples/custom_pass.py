"""Add your own Relax pass to the qcompile pipeline.

Passes are ordinary TVM passes, written the way TVM's own relax/transform passes are:
a ``@relax.expr_functor.mutator`` class over Relax expressions, wrapped in a
``@relax.transform.function_pass``. Hook one before or after any named stage:

    import to run it from Python:
        python examples/custom_pass.py [MODEL.onnx]

    or from the command line:
        qcompile compile MODEL.onnx -o out \
            --pass examples/custom_pass.py:RemoveDoubleRelu --at after:preprocess \
            --pass examples/custom_pass.py:CountOps --at before:lower

Stages: import preprocess annotate calibrate realize lower apply_records build export.
"""

from __future__ import annotations

import sys
from collections import Counter

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator


@mutator
class _DoubleReluRemover(PyExprMutator):
    """relu(relu(x)) -> relu(x): the second ReLU of a pair does nothing."""

    def __init__(self, mod):
        super().__init__(mod)
        self.removed = 0

    def visit_call_(self, call):
        call = super().visit_call_(call)
        relu = tvm.ir.Op.get("relax.nn.relu")
        if call.op == relu:
            inner = self.lookup_binding(call.args[0]) if isinstance(call.args[0], relax.Var) else call.args[0]
            if isinstance(inner, relax.Call) and inner.op == relu:
                self.removed += 1
                return call.args[0]
        return call


@relax.transform.function_pass(opt_level=0, name="RemoveDoubleRelu")
class RemoveDoubleRelu:
    """Fold a ReLU applied to a ReLU (a pattern some exporters leave behind)."""

    def transform_function(self, func, mod, ctx):
        remover = _DoubleReluRemover(mod)
        new_func = remover.visit_expr(func)
        if remover.removed:
            print(f"RemoveDoubleRelu: removed {remover.removed} redundant relu(s)")
        return relax.analysis.remove_all_unused(new_func)


@relax.transform.function_pass(opt_level=0, name="CountOps")
class CountOps:
    """An analysis pass: print the Relax op histogram and leave the function unchanged."""

    def __init__(self):
        self.counts = Counter()

    def transform_function(self, func, mod, ctx):
        def visit(e):
            if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op):
                self.counts[e.op.name] += 1

        relax.analysis.post_order_visit(func, visit)
        print("CountOps:", ", ".join(f"{op}={n}" for op, n in self.counts.most_common()))
        return func


def main(model_path: str | None = None):
    import qcompile
    from qcompile import zoo

    model_path = model_path or zoo.DIGITS_MODEL
    counter = CountOps()
    pipe = qcompile.Pipeline(target="auto")
    pipe.add_pass(RemoveDoubleRelu(), after="preprocess")
    pipe.add_pass(counter, before="lower")
    artifact = pipe.run(model_path)
    print(f"compiled {model_path} for {artifact.target_name} with hooks {pipe.hooks()}")
    return artifact, counter.counts


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
