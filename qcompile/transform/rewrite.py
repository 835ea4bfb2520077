"""What every qcompile Relax rewrite pass shares: the loop of a PyExprMutator over each Relax function,
op tests and use counts."""

from collections import Counter


def rewrite_relax_functions(mod, mutator):
    """Visit every Relax function of `mod` with `mutator` (a PyExprMutator constructed on `mod`)
    and return the module its builder holds."""
    from tvm import relax

    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gv, mutator.visit_expr(func))
    return mutator.builder_.get()


def is_op(e, *names) -> bool:
    """Is `e` a call of one of the Relax ops `names` ("relax.add", ...)?"""
    import tvm
    from tvm import relax

    return isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name in names


def use_counts(func) -> tuple[Counter, dict]:
    """({var: how many bindings and returns read it}, {var: the last binding that reads it}) of a function."""
    from tvm import relax

    users, user_of = Counter(), {}
    for blk in func.body.blocks:
        for b in blk.bindings:
            for v in relax.analysis.free_vars(b.value):
                users[v] += 1
                user_of[v] = b
    users.update(relax.analysis.free_vars(func.body.body))
    return users, user_of
