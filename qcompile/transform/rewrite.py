"""The one loop every qcompile Relax rewrite pass runs: a PyExprMutator over each Relax function."""


def rewrite_relax_functions(mod, mutator):
    """Visit every Relax function of `mod` with `mutator` (a PyExprMutator constructed on `mod`)
    and return the module its builder holds."""
    from tvm import relax

    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gv, mutator.visit_expr(func))
    return mutator.builder_.get()
