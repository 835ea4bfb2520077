"""Default schedules for the kernels that have no tuning record (CPU targets).

Legalized Relax gives every fused kernel as TVM's naive loop nest: one loop per axis, the
reduction accumulated in memory, no threads. On CNNs that runs 100-300x slower than ONNX Runtime.
``DefaultSchedule`` is a module pass that gives each unscheduled PrimFunc a fixed, deterministic
schedule in TVM's dlight idiom: ``ScheduleRule``s are tried in order and the first one that
applies wins.

  * ``TiledReduction``: one reduction block (conv2d, matmul, pooling, reductions) plus elementwise
    prologue/epilogue blocks (padding, bias, ReLU, the integer requantize chain). The outputs are
    computed in register tiles of ``u x v``: ``v`` is one or two SIMD registers along a vector axis,
    ``u`` is unrolled along a second spatial axis. A tile accumulates in a local buffer over the whole
    reduction, then the fused epilogue writes it out. The vector axis is either
      - the innermost output axis, when an input is contiguous along it (matmul ``[K, N]``
        weights, stride-1 convolutions whose width is a multiple of the vector); or
      - an axis that indexes only a weight-like input, e.g. a conv's output channels: that input is
        packed per tile of channels into ``[.., v]`` (contiguous vectors), once per tile of channels
        and not per output point.
    When neither applies (pooling with stride 2, odd widths) the loops stay as they are and only the
    outer spatial loops are fused (and run in parallel when the kernel is large); LLVM vectorizes
    the inner loop itself.
  * ``RowReduction``: one reduction block whose reduction runs along the innermost axis (mean
    over H x W, row sums): parallel over the outputs, the epilogue computed at the same loop.
  * ``MultiReduction``: softmax / layer norm style kernels (several reductions over the same rows),
    TVM's ``dlight.cpu.Reduction``, asked only when every block has the same leading rows and the
    kernel is large enough for its parallel loop.
  * ``Injective``: elementwise / layout kernels: blocks inlined, the outer loops fused, the inner
    one vectorized when its extent is a multiple of the vector.
  * ``Fallback``: anything else, one root block at a time, the same way.

Kernels that already carry ``tirx.is_scheduled`` (those a tuning record scheduled in the
``apply_records`` stage) are left alone, so records always win. A rule that raises is skipped and
the next is tried; a kernel no rule takes stays the naive loop nest. Schedules only reorder loops,
pack weights and accumulate in a local tile, so integer results are bit-exact and float results
differ only by summation order.

A parallel loop costs a thread-pool launch, about 20 us on the 2-core dev machine even at one
thread, so only kernels with at least ``PARALLEL_MIN_WORK`` loop iterations get one.
"""

from __future__ import annotations

import math
import time

# Kernels with fewer loop iterations (multiply-adds for a reduction) than this stay on one thread.
PARALLEL_MIN_WORK = 1 << 22


# ----------------------------------------------------------------------------- target facts

def vector_bits(target) -> int:
    """SIMD register width of an llvm target, from its features (TVM's llvm_get_vector_width
    answers 512 for haswell in 0.27, so it is not used)."""
    from tvm.target import codegen

    def has(feature):
        try:
            return bool(codegen.target_has_features(feature, target))
        except Exception:  # noqa: BLE001 - unknown feature names raise on some LLVM versions
            return False

    if has("avx512f"):
        return 512
    if has("avx2") or has("avx"):
        return 256
    return 128


def vector_registers(target) -> int:
    """How many SIMD registers the target has (AVX-512 and AArch64: 32, AVX2/SSE: 16)."""
    triple = str(target.attrs.get("mtriple", "")) if target is not None else ""
    if triple.startswith(("aarch64", "arm64")) or vector_bits(target) >= 512:
        return 32
    return 16


def is_cpu(target) -> bool:
    return target is not None and target.kind.name == "llvm"


# ----------------------------------------------------------------------------- helpers

def _extent(sch, loop) -> int | None:
    from tvm import tirx

    ext = sch.get(loop).extent
    return int(ext.value) if isinstance(ext, tirx.IntImm) else None


def _bits(dtype) -> int:
    from tvm import DataType

    return DataType(str(dtype)).bits


def _block_bits(sch, block) -> int:
    """The widest element type the block reads or writes (at least 8 bits)."""
    stmt = sch.get(block)
    return max([8] + [_bits(r.source.dtype) for r in list(stmt.reads) + list(stmt.writes)])


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _largest_divisor(n: int, cap: int) -> int:
    return max(d for d in _divisors(n) if d <= max(1, cap))


def _loop_kinds(sch, block):
    """[(loop, 'S' | 'R', extent, block iter var)] for a block whose iteration variables are bound
    one-to-one to its loops (what legalization produces). None for anything else."""
    from tvm import tirx
    from tvm.s_tir.dlight.analysis.common_analysis import get_sblockrealize

    loops = sch.get_loops(block)
    stmt = sch.get(block)
    realize = get_sblockrealize(sch, block)
    kind_of = {}
    for iv, value in zip(stmt.iter_vars, realize.iter_values):
        if isinstance(value, tirx.IntImm):
            continue
        if not isinstance(value, tirx.Var):
            return None
        if iv.iter_type == tirx.IterVar.DataPar:
            kind_of[value] = ("S", iv.var)
        elif iv.iter_type == tirx.IterVar.CommReduce:
            kind_of[value] = ("R", iv.var)
        else:
            return None
    out = []
    for loop in loops:
        ext = _extent(sch, loop)
        if ext is None:
            return None
        kind, var = kind_of.get(sch.get(loop).loop_var, (None, None))
        if kind is None:
            if ext != 1:
                return None
            kind = "S"
        out.append((loop, kind, ext, var))
    return out


def _has_if_then_else(sch, block) -> bool:
    from tvm_ffi import get_global_func

    return bool(get_global_func("s_tir.schedule.HasIfThenElse")(sch.get(block)))


def _is_spatial(sch, block) -> bool:
    from tvm import tirx

    return all(iv.iter_type == tirx.IterVar.DataPar for iv in sch.get(block).iter_vars)


def _inline_spatial(sch, blocks, keep_padding: bool = True):
    """compute_inline / reverse_compute_inline every spatial block that allows it (with
    keep_padding, not the ones with an if_then_else: padding inlined into a convolution would be
    evaluated per multiply-add). Returns the blocks left."""
    left = list(blocks)
    changed = True
    while changed:
        changed = False
        for b in list(left):
            if not _is_spatial(sch, b) or (keep_padding and _has_if_then_else(sch, b)):
                continue
            for inline in (sch.compute_inline, sch.reverse_compute_inline):
                try:
                    inline(b)
                except Exception:  # noqa: BLE001 - the schedule says no: try the next block
                    continue
                left.remove(b)
                changed = True
                break
    return left


def _root_blocks(sch):
    from tvm.s_tir.dlight.analysis.common_analysis import get_root_block

    return list(sch.get_child_blocks(get_root_block(sch)))


def _vars_in(expr) -> list:
    from tvm.s_tir.dlight.analysis.common_analysis import collect_vars_used_in_prim_expr

    return list(collect_vars_used_in_prim_expr(expr))


def _uses(expr, var) -> bool:
    return any(v.same_as(var) for v in _vars_in(expr))


def _stride(expr, var):
    """The coefficient of `var` in the index `expr` (None when it is not linear in it)."""
    from tvm import sym, tirx

    res = sym.detect_linear_equation(expr, [var])
    if len(res) != 2 or not isinstance(res[0], tirx.IntImm) or _uses(res[1], var):
        return None
    return int(res[0].value)


def _maybe_parallel(sch, loop, work: int):
    if loop is not None and work >= PARALLEL_MIN_WORK and (_extent(sch, loop) or 0) > 1:
        sch.parallel(loop)


def _vectorize_if_whole(sch, loop, lanes: int):
    """Vectorize `loop` when its extent is a multiple of the lanes (splitting it to 1-2 registers)."""
    ext = _extent(sch, loop)
    if ext is None or ext % lanes:
        return
    f = 2 * lanes if ext % (2 * lanes) == 0 else lanes
    if f < ext:
        loop = sch.split(loop, factors=[None, f])[1]
    sch.vectorize(loop)


def schedule_injective_block(sch, block, vbits: int):
    """One spatial loop nest: the innermost loop vectorized when its extent is a multiple of the
    vector (otherwise LLVM's own vectorizer gets it), the loops outside fused (and parallel when the
    block is big enough)."""
    loops = sch.get_loops(block)
    if not loops:
        return
    exts = [_extent(sch, lp) for lp in loops]
    if any(e is None for e in exts):
        return
    lanes = max(2, vbits // _block_bits(sch, block))
    inner, ext = loops[-1], exts[-1]
    outer = list(loops[:-1])
    if ext % lanes == 0:
        if ext > lanes:
            o, inner = sch.split(inner, factors=[None, lanes])
            outer.append(o)
        sch.vectorize(inner)
    if outer and math.prod(exts) >= PARALLEL_MIN_WORK:
        fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        _maybe_parallel(sch, fused, math.prod(exts))


# ----------------------------------------------------------------------------- the tile plan

def _tile(v_ext: int, u_ext: int | None, lanes: int, budget: int):
    """(vi, ui): vi one or two registers dividing v_ext, ui rows of the u axis, so that the tile
    uses as many of the `budget` accumulator registers as possible (ties: the wider vi).

    ui divides u_ext when that fills at least half the budget. Otherwise (13, 111 rows) the u axis is
    cut in equal tiles (13 -> 7 + 6) and the last one is predicated: measured slower than an exact
    tile of the same size, so it is the second choice. None when no vector divides v_ext.

    With no u axis (a matrix-vector product: one output row) the accumulators all go to the vector
    axis, so each weight row is read in long contiguous runs and several FMA chains overlap."""
    exact, cut = None, None
    widths = (2 * lanes, lanes) if u_ext and u_ext > 1 else tuple(lanes * r for r in range(budget, 0, -1))
    for vi in widths:
        if v_ext % vi:
            continue
        regs = vi // lanes
        cap = max(1, budget // regs)
        ui = _largest_divisor(u_ext, cap) if u_ext else 1
        if exact is None or (ui * regs, vi) > exact[0]:
            exact = ((ui * regs, vi), vi, ui)
        if u_ext and u_ext > cap:
            tiles = -(-u_ext // cap)
            uc = -(-u_ext // tiles)
            if cut is None or (uc * regs, vi) > cut[0]:
                cut = ((uc * regs, vi), vi, uc)
    if exact is None:
        return None
    if cut is not None and 2 * exact[0][0] < budget and cut[0][0] > exact[0][0]:
        return cut[1:]
    return exact[1:]


def _tile_2d(v_ext: int, u_ext: int, u2_ext: int, lanes: int, budget: int):
    """(vi, ui, u2i) for a tile of ui broadcast rows x u2i vector rows x vi lanes: fewest loads per
    multiply-add ((u2i * regs + ui) / (ui * u2i * regs)), then the most accumulators, within the
    budget. Exact divisors only; None when no vector divides v_ext."""
    best = None
    for vi in (2 * lanes, lanes):
        if v_ext % vi:
            continue
        regs = vi // lanes
        for ui in _divisors(u_ext):
            for u2i in _divisors(u2_ext):
                acc = ui * u2i * regs
                if acc > budget:
                    continue
                key = (-(u2i * regs + ui) / acc, acc, vi)
                if best is None or key > best[0]:
                    best = (key, vi, ui, u2i)
    return None if best is None else best[1:]


def _plan(sch, block, kinds, lanes, budget):
    """Pick the vector axis. Returns dict(style, v, u, vi, ui, pack) or None.

    'inner': v = innermost spatial axis, some input contiguous along it;
    'packed': v = a spatial axis that only one input (the weight) depends on, in a dimension that
    is not its last; that input gets packed to [.., vi] per tile of v.
    """
    stmt = sch.get(block)
    spatial = [i for i, (_, k, e, _) in enumerate(kinds) if k == "S" and e > 1]
    if not spatial:
        return None
    reads = [r for r in stmt.reads if r.region]
    out_region = stmt.writes[0].region

    # 'inner'
    v = spatial[-1]
    var = kinds[v][3]
    if out_region and _uses(out_region[-1].min, var) and _stride(out_region[-1].min, var) == 1:
        vec_reads = [r for r in reads if _uses(r.region[-1].min, var) and _stride(r.region[-1].min, var) == 1]
        if vec_reads:
            # u: an axis only the broadcast operand depends on (a conv's output channels, a matmul's
            # rows), so one vector load serves u multiply-adds; u2: an axis of the vector operand (a
            # conv's rows), so one broadcast serves u2 vectors. A tile of u x u2 x v outputs.
            others = [i for i in spatial if i != v]
            vec_side = [i for i in others if any(_uses(d.min, kinds[i][3]) for d in vec_reads[0].region)]
            bcast_side = [i for i in others if i not in vec_side]
            u = bcast_side[-1] if bcast_side else (vec_side[-1] if vec_side else None)
            u2 = vec_side[-1] if bcast_side and vec_side else None
            if u2 is None:
                t = _tile(kinds[v][2], kinds[u][2] if u is not None else None, lanes, budget)
                if t is not None:
                    return {"style": "inner", "v": v, "u": u, "vi": t[0], "ui": t[1], "u2": None, "u2i": 1,
                            "pack": None}
            else:
                t = _tile_2d(kinds[v][2], kinds[u][2], kinds[u2][2], lanes, budget)
                if t is not None:
                    return {"style": "inner", "v": v, "u": u, "vi": t[0], "ui": t[1], "u2": u2, "u2i": t[2],
                            "pack": None}

    # 'packed'
    for v in spatial:
        var = kinds[v][3]
        users = [i for i, r in enumerate(stmt.reads) if any(_uses(d.min, var) for d in r.region)]
        users = [i for i in users if not stmt.reads[i].source.same_as(stmt.writes[0].source)]
        if len(users) != 1 or len(reads) < 2:
            continue  # packing pays only when another input is reused across the packed tile
        region = stmt.reads[users[0]].region
        dims = [d for d, rng in enumerate(region) if _uses(rng.min, var)]
        if len(dims) != 1 or dims[0] == len(region) - 1 or not region[dims[0]].min.same_as(var):
            continue
        if any(not _is_plain_var(rng.min) and not _is_const(rng.min) for rng in region):
            continue  # pack only simply indexed (weight-like) inputs
        others = [i for i in spatial if i != v]
        u = others[-1] if others else None
        t = _tile(kinds[v][2], kinds[u][2] if u is not None else None, lanes, budget)
        if t is not None:
            read_index = _read_index(stmt, stmt.reads[users[0]].source)
            if read_index is None:
                continue
            return {"style": "packed", "v": v, "u": u, "vi": t[0], "ui": t[1], "u2": None, "u2i": 1,
                    "pack": (read_index, dims[0])}
    return None


def _buffer_bytes(buf) -> int:
    from tvm import tirx

    n = 1
    for d in buf.shape:
        if not isinstance(d, tirx.IntImm):
            return 1 << 40
        n *= int(d.value)
    return n * max(1, _bits(buf.dtype) // 8)


def _order_tiles(sch, block, kinds, outer, plan):
    """Order the loops over tiles for cache reuse. Returns (first, second, pack_outer).

    With two large inputs A and B (activations and weights), a loop over tiles indexes A only, B only,
    both or neither. Running the A-only loops outside the B-only ones reads A once and B once per
    A-only iteration: |A| + n_A * |B| bytes; the other way round |B| + n_B * |A|. The cheaper order
    wins: a 1x1 conv on 56 x 56 keeps an input tile in cache over all output channels, a late 3x3
    layer keeps a weight tile over all positions, a matmul keeps a strip of its [K, N] weight over
    the rows. `first` (loops indexing both or neither, then the outer side) is fused and may run in
    parallel. pack_outer: the packed input's own loops are in `first`, so its tile is packed there
    (else it is packed whole, once)."""
    stmt = sch.get(block)
    out_buf = stmt.writes[0].source
    reads = [r for r in stmt.reads if r.region and not r.source.same_as(out_buf)]
    reads.sort(key=lambda r: -_buffer_bytes(r.source))
    if len(reads) < 2:
        return [lp for lp, _ in outer], [], False
    a, b = reads[0], reads[1]

    def indexes(region, i):
        var = kinds[i][3]
        return var is not None and any(_uses(d.min, var) for d in region.region)

    both, side_a, side_b = [], [], []
    for lp, i in outer:
        ia, ib = indexes(a, i), indexes(b, i)
        (both if ia == ib else side_a if ia else side_b).append((lp, i))
    n_a = math.prod(_extent(sch, lp) or 1 for lp, _ in side_a)
    n_b = math.prod(_extent(sch, lp) or 1 for lp, _ in side_b)
    size_a, size_b = _buffer_bytes(a.source), _buffer_bytes(b.source)
    a_outside = size_a + n_a * size_b <= size_b + n_b * size_a
    outside, inside = (side_a, side_b) if a_outside else (side_b, side_a)
    if not both and not outside:
        outside, inside = inside, []
    pack_outer = False
    if plan["pack"] is not None:
        packed_buf = stmt.reads[plan["pack"][0]].source
        packed_side = side_a if packed_buf.same_as(a.source) else side_b if packed_buf.same_as(b.source) else None
        pack_outer = packed_side is outside and bool(outside)
    first = [lp for lp, _ in both + outside]
    return first, [lp for lp, _ in inside], pack_outer


def _is_plain_var(expr) -> bool:
    from tvm import tirx

    return isinstance(expr, tirx.Var)


def _is_const(expr) -> bool:
    from tvm import tirx

    return isinstance(expr, tirx.IntImm)


def _read_index(stmt, buffer):
    """Index of `buffer` among the block's reads, in the numbering cache_read uses."""
    for i, r in enumerate(stmt.reads):
        if r.source.same_as(buffer):
            return i
    return None



# ----------------------------------------------------------------------------- tensorized dense

def _dot_intrin_of(sch, block):
    """The DotIntrin a packed dense block is annotated with (qcompile.intrin.pack), else None."""
    from ..intrin import DOT_INTRINSICS
    from ..intrin.pack import ANNOTATION

    name = sch.get(block).annotations.get(ANNOTATION)
    return DOT_INTRINSICS.get(str(name)) if name is not None else None


def _dot_tile(rows: int, blocks: int, registers: int):
    """(ui, nv): ui rows x nv intrinsic blocks of accumulators, exact divisors of `rows` and
    `blocks`, within the registers (accumulators + nv weight vectors + a broadcast and a temporary).
    Most multiply-adds per load first, then the most accumulators, then the wider nv (a weight
    vector load is cheaper than an activation broadcast)."""
    best = None
    for ui in _divisors(rows):
        for nv in _divisors(blocks):
            if ui * nv + nv + 2 > registers:
                continue
            key = (ui * nv / (ui + nv), ui * nv, nv)
            if best is None or key > best[0]:
                best = (key, ui, nv)
    return best[1], best[2]


def _schedule_tensorized_dense(sch, block, before, after, kinds, intrin, target):
    """Tile [rows x (nv * lanes)] of int32 accumulators over the packed K, one `intrin` call per
    (row, block, k step); the tile loops ordered for cache reuse; the epilogue per tile."""
    from ..intrin import ensure_registered

    spatial = [(lp, e) for lp, k, e, _ in kinds if k == "S"]
    reduce_ = [(lp, e) for lp, k, e, _ in kinds if k == "R"]
    if len(reduce_) != 1 or not spatial or spatial[-1][1] % intrin.lanes or reduce_[0][1] % intrin.k:
        return None
    ensure_registered(intrin)
    (n_loop, n_ext), (r_loop, r_ext) = spatial[-1], reduce_[0]
    lead = [lp for lp, _ in spatial[:-1]]
    rows = math.prod(e for _, e in spatial[:-1])
    ui, nv = _dot_tile(rows, n_ext // intrin.lanes, vector_registers(target))
    m_loop = (sch.fuse(*lead) if len(lead) > 1 else lead[0]) if lead else None
    mo, mi = sch.split(m_loop, factors=[None, ui]) if m_loop is not None else (None, None)
    no, nvl, ni = sch.split(n_loop, factors=[None, nv, intrin.lanes])
    ro, ri = sch.split(r_loop, factors=[None, intrin.k])
    # weights [Np, Kp] and activations [rows, Kp]: read once the one whose tile loop is outside
    w_bytes, a_bytes = n_ext * r_ext, rows * r_ext
    n_tiles, m_tiles = n_ext // (nv * intrin.lanes), rows // ui
    tiles = [no, mo] if w_bytes + n_tiles * a_bytes <= a_bytes + m_tiles * w_bytes else [mo, no]
    tiles = [lp for lp in tiles if lp is not None]
    inner = [lp for lp in (mi, nvl) if lp is not None]
    sch.reorder(*tiles, ro, *inner, ni, ri)

    # the intrinsics' buffers are "global": a tile-sized buffer LLVM keeps in registers once unrolled
    local = sch.cache_write(block, 0, "global")
    writer, after_left = local, list(after)
    if len(after) == 1:
        try:
            sch.compute_inline(local)
            writer, after_left = after[0], []
        except Exception:  # noqa: BLE001 - epilogue not 1:1 with the outputs: keep the copy
            pass
    sch.reverse_compute_at(writer, tiles[-1], preserve_unit_loops=True)
    vbits = vector_bits(target)
    _vectorize_if_whole(sch, sch.get_loops(writer)[-1], max(2, vbits // _block_bits(sch, writer)))
    for lp in inner:
        sch.unroll(lp)
    _maybe_parallel(sch, tiles[0], rows * n_ext * r_ext)
    init = sch.decompose_reduction(block, ro)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(ni, intrin.name)
    for b in before + after_left:
        schedule_injective_block(sch, b, vbits)
    return sch


# ----------------------------------------------------------------------------- tensorized conv

def _conv_dot_tile(cols: int, blocks: int, registers: int, intrin):
    """(ui, nv): ui output columns x nv blocks of lanes output channels, exact divisors of `cols` and
    `blocks`, within the registers (accumulators, the nv weight vectors when ui > 1 reuses them, a
    broadcast and a temporary). Fewest instructions per intrinsic call: ui activation broadcasts
    (``a_cost`` each), nv weight loads and 2 per call (multiply-add, accumulate), over ui * nv calls.
    The AVX2 intrinsic widens its activation pair before broadcasting it (movzwl, vmovd, vpmovsxbw,
    vpbroadcastd): a_cost 5 there, and measured on a 512->1000 1x1 conv at 13x13, 1 column x 5 blocks
    ran in 7.4 ms against 14.0 ms for the 13 x 1 tile ``_dot_tile`` picks (equal costs)."""
    a_cost = 5 if "avx2" in intrin.name else 1
    best = None
    for ui in _divisors(cols):
        for nv in _divisors(blocks):
            if ui * nv + (nv if ui > 1 else 1) + 2 > registers:
                continue
            key = (-(ui * a_cost + nv + 2 * ui * nv) / (ui * nv), ui * nv, nv)
            if best is None or key > best[0]:
                best = (key, ui, nv)
    return best[1], best[2]


def _schedule_tensorized_conv(sch, block, before, after, kinds, intrin, target):
    """A conv qcompile.intrin.pack_conv packed (acc[n, y, x, o] over kh, kw, c with the packed weight
    6-D): a register tile of ui output columns x nv blocks of lanes output channels, each step of the
    reduction (kh, kw, c / k) one `intrin` call per column and block; the tile loops ordered for cache
    reuse; the NCHW write and the fused epilogue per tile."""
    from ..intrin import ensure_registered

    stmt = sch.get(block)
    w_read = [r for r in stmt.reads if len(r.source.shape) == 6]
    a_read = [r for r in stmt.reads if len(r.source.shape) == 4]
    out = stmt.writes[0].region
    if len(w_read) != 1 or len(a_read) != 1 or len(out) != 4:
        return None

    def loop_at(index):  # the (loop, extent) whose block var is `index`; (None, 1) for a constant
        for lp, _, e, var in kinds:
            if var is not None and index.same_as(var):
                return lp, e
        return (None, 1) if _is_const(index) else (False, 0)

    (x_loop, x_ext), (o_loop, o_ext) = loop_at(out[2].min), loop_at(out[3].min)
    c_loop, c_ext = loop_at(a_read[0].region[3].min)
    if not o_loop or not c_loop or x_loop is False or o_ext % intrin.lanes or c_ext % intrin.k:
        return None
    ensure_registered(intrin)
    taken = [lp for lp in (x_loop, o_loop, c_loop) if lp is not None]
    unit = [lp for lp, _, _, var in kinds if var is None]
    rows = [lp for lp, k, _, var in kinds if k == "S" and var is not None and not any(lp.same_as(t) for t in taken)]
    reduce_ = [lp for lp, k, _, _ in kinds if k == "R" and not lp.same_as(c_loop)]
    ui, nv = _conv_dot_tile(x_ext, o_ext // intrin.lanes, vector_registers(target), intrin)
    xo, xi = sch.split(x_loop, factors=[None, ui]) if x_loop is not None else (None, None)
    oo, ov, oi = sch.split(o_loop, factors=[None, nv, intrin.lanes])
    co, ci = sch.split(c_loop, factors=[None, intrin.k])
    # weights [Op, KH, KW, Cp] against activations: read once the one whose tile loop is outside
    w_bytes, a_bytes = _buffer_bytes(w_read[0].source), _buffer_bytes(a_read[0].source)
    spatial_tiles = [lp for lp in rows + [xo] if lp is not None]
    n_o_tiles = o_ext // (nv * intrin.lanes)
    n_s_tiles = math.prod(_extent(sch, lp) or 1 for lp in spatial_tiles)
    if w_bytes + n_o_tiles * a_bytes <= a_bytes + n_s_tiles * w_bytes:
        tiles = [oo] + spatial_tiles
    else:
        tiles = spatial_tiles + [oo]
    inner = [lp for lp in (xi, ov) if lp is not None]
    sch.reorder(*unit, *tiles, *reduce_, co, *inner, oi, ci)

    # the intrinsics' buffers are "global": a tile-sized buffer LLVM keeps in registers once unrolled
    local = sch.cache_write(block, 0, "global")
    writer, after_left = local, list(after)
    if len(after) == 1:
        try:
            sch.compute_inline(local)
            writer, after_left = after[0], []
        except Exception:  # noqa: BLE001 - epilogue not 1:1 with the outputs: keep the copy
            pass
    sch.reverse_compute_at(writer, tiles[-1], preserve_unit_loops=True)
    vbits = vector_bits(target)
    _vectorize_if_whole(sch, sch.get_loops(writer)[-1], max(2, vbits // _block_bits(sch, writer)))
    for lp in inner:
        sch.unroll(lp)
    _maybe_parallel(sch, tiles[0], math.prod(e for _, _, e, _ in kinds))
    init = sch.decompose_reduction(block, (reduce_ or [co])[0])
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(oi, intrin.name)
    for b in before + after_left:
        schedule_injective_block(sch, b, vbits)
    return sch

# ----------------------------------------------------------------------------- rules

def _single_reduction(sch):
    """(reduction block, [blocks before], [blocks after]) after inlining what can be, or None."""
    blocks = _inline_spatial(sch, _root_blocks(sch))
    reductions = [b for b in blocks if not _is_spatial(sch, b)]
    if len(reductions) != 1:
        return None
    block = reductions[0]
    pos = blocks.index(block)
    return block, blocks[:pos], blocks[pos + 1:]


def _open_single_reduction(rule, func, target):
    """The start every single-reduction rule shares: (schedule, block, before, after, loop kinds),
    or None when the target is not the rule's, the function does not normalize, it has not exactly
    one reduction block, or its loops are not plain."""
    from tvm import s_tir
    from tvm.s_tir.dlight.analysis import normalize_prim_func

    if not rule.is_target_available(target):
        return None
    sch = s_tir.Schedule(func)
    if normalize_prim_func(sch) is None:
        return None
    found = _single_reduction(sch)
    if found is None:
        return None
    block, before, after = found
    kinds = _loop_kinds(sch, block)
    if kinds is None:
        return None
    return sch, block, before, after, kinds


def _make_rules():
    """The rule classes (defined lazily: their base class needs tvm)."""
    from tvm import s_tir
    from tvm.s_tir.dlight.analysis import normalize_prim_func
    from tvm.s_tir.dlight.cpu.base import CPUScheduleRule

    class TensorizedDense(CPUScheduleRule):
        """A dense layer whose weights qcompile.intrin.pack packed for a dot-product intrinsic (its
        reduction block names the intrinsic): register tiles of rows x blocks of lanes, each step of
        the reduction one intrinsic call per row and block (vpdpbusd, vpmaddwd, sdot)."""

        def apply(self, func, target, _tunable):
            opened = _open_single_reduction(self, func, target)
            if opened is None:
                return None
            sch, block, before, after, kinds = opened
            intrin = _dot_intrin_of(sch, block)
            if intrin is None:
                return None
            return _schedule_tensorized_dense(sch, block, before, after, kinds, intrin, target)

    class TensorizedConv(CPUScheduleRule):
        """A conv2d whose weights qcompile.intrin.pack_conv packed for a dot-product intrinsic (its
        reduction block names the intrinsic, its weight is 6-D): register tiles of output columns x
        blocks of lanes output channels, one intrinsic call per column, block and step of the
        reduction."""

        def apply(self, func, target, _tunable):
            opened = _open_single_reduction(self, func, target)
            if opened is None:
                return None
            sch, block, before, after, kinds = opened
            intrin = _dot_intrin_of(sch, block)
            if intrin is None:
                return None
            return _schedule_tensorized_conv(sch, block, before, after, kinds, intrin, target)

    class TiledReduction(CPUScheduleRule):
        """conv2d, matmul, pooling: register tiles, local accumulators, fused epilogue."""

        def apply(self, func, target, _tunable):
            opened = _open_single_reduction(self, func, target)
            if opened is None:
                return None
            sch, block, before, after, kinds = opened
            if not any(k == "R" for _, k, _, _ in kinds):
                return None
            vbits = vector_bits(target)
            lanes = max(2, vbits // _bits(sch.get(block).writes[0].source.dtype))
            budget = max(1, vector_registers(target) * 3 // 4)
            work = math.prod(e for _, _, e, _ in kinds)
            reduction = math.prod(e for _, k, e, _ in kinds if k == "R")
            if reduction < 8:
                return None  # a residual add imported as stack + sum over 2: Untiled
            plan = _plan(sch, block, kinds, lanes, budget)
            if plan is None:
                return None
            return self._tiled(sch, block, before, after, kinds, plan, work, vbits)

        @staticmethod
        def _tiled(sch, block, before, after, kinds, plan, work, vbits):
            v, u, vi, ui = plan["v"], plan["u"], plan["vi"], plan["ui"]
            u2, u2i = plan["u2"], plan["u2i"]
            loops, outer = {}, []   # outer: [(loop, axis index)] of the loops over tiles
            for i, (lp, kind, ext, _) in enumerate(kinds):
                if kind != "S":
                    continue
                if i == v:
                    o, n = sch.split(lp, factors=[None, vi]) if vi < ext else (None, lp)
                    loops["vi"] = n
                elif i == u and ui > 1:
                    o, n = sch.split(lp, factors=[None, ui]) if ui < ext else (None, lp)
                    loops["ui"] = n
                elif i == u2 and u2i > 1:
                    o, n = sch.split(lp, factors=[None, u2i]) if u2i < ext else (None, lp)
                    loops["u2i"] = n
                else:
                    o = lp
                if o is not None:
                    outer.append((o, i))
            first, second, pack_outer = _order_tiles(sch, block, kinds, outer, plan)
            r_loops = [lp for lp, k, _, _ in kinds if k == "R"]
            inner = [lp for lp in (loops.get("ui"), loops.get("u2i"), loops["vi"]) if lp is not None]
            sch.reorder(*first, *second, *r_loops, *inner)
            lead = sch.fuse(*first) if len(first) > 1 else (first[0] if first else None)
            last = second[-1] if second else lead
            if last is None:
                return None

            # accumulate the tile locally; the epilogue (or a copy) writes it out
            local = sch.cache_write(block, 0, "local")
            out_region = sch.get(block).writes[0].region
            v_dims = [d for d, rng in enumerate(out_region) if _uses(rng.min, kinds[v][3])]
            if len(v_dims) == 1 and v_dims[0] != len(out_region) - 1:
                # the vector axis last in the accumulator, or LLVM splits it into scalars
                sch.transform_layout(block, ("write", 0), _move_last_map(len(out_region), v_dims[0]))
            writer = local
            after_left = list(after)
            if len(after) == 1:
                try:
                    sch.compute_inline(local)
                    writer = after[0]
                    after_left = []
                except Exception:  # noqa: BLE001 - epilogue not 1:1 with the outputs: keep the copy
                    pass
            sch.reverse_compute_at(writer, last, preserve_unit_loops=True)
            wloops = sch.get_loops(writer)
            _vectorize_if_whole(sch, wloops[-1], max(2, vbits // _block_bits(sch, writer)))

            if plan["pack"] is not None:
                read_index, dim = plan["pack"]
                packed = sch.cache_read(block, read_index, "global")
                ndim = len(sch.get(packed).writes[0].region)
                sch.transform_layout(packed, ("write", 0), _pack_map(ndim, dim, vi))
                if pack_outer and lead is not None:
                    # packed once per tile of the vector axis; otherwise once for all, at the root
                    sch.compute_at(packed, lead, preserve_unit_loops=True)

            for key in ("ui", "u2i"):
                if loops.get(key) is not None:
                    sch.unroll(loops[key])
            sch.vectorize(loops["vi"])
            _maybe_parallel(sch, lead, work)
            sch.decompose_reduction(block, r_loops[0])  # after the loop kinds: the init copies them
            for b in before + after_left:
                schedule_injective_block(sch, b, vbits)
            return sch

    class RowReduction(CPUScheduleRule):
        """One reduction block whose reduction runs along the innermost axis (mean over H x W, a
        row sum): parallel over the outputs, the reduction serial, the epilogue at the same loop."""

        def apply(self, func, target, _tunable):
            opened = _open_single_reduction(self, func, target)
            if opened is None:
                return None
            sch, block, before, after, kinds = opened
            spatial = [lp for lp, k, _, _ in kinds if k == "S"]
            r_loops = [lp for lp, k, _, _ in kinds if k == "R"]
            if not spatial or not r_loops:
                return None
            r_vars = [var for _, k, _, var in kinds if k == "R" and var is not None]
            s_vars = [var for _, k, _, var in kinds if k == "S" and var is not None]
            out_buf = sch.get(block).writes[0].source
            reads = [r for r in sch.get(block).reads if r.region and not r.source.same_as(out_buf)]
            if not reads:
                return None
            big = max(reads, key=lambda r: _buffer_bytes(r.source))
            last = big.region[-1].min
            if not any(_uses(last, var) for var in r_vars) or any(_uses(last, var) for var in s_vars):
                return None  # the largest input's innermost axis is not the reduction alone (pooling, conv)
            work = math.prod(e for _, _, e, _ in kinds)
            sch.reorder(*spatial, *r_loops)
            fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
            after_left = list(after)
            if len(after) == 1:
                try:
                    sch.reverse_compute_at(after[0], fused, preserve_unit_loops=True)
                    after_left = []
                except Exception:  # noqa: BLE001 - epilogue that does not follow the outputs 1:1
                    pass
            _maybe_parallel(sch, fused, work)
            vbits = vector_bits(target)
            for b in before + after_left:
                schedule_injective_block(sch, b, vbits)
            return sch

    class Untiled(CPUScheduleRule):
        """One reduction block with no vector axis (pooling with stride 2 or an odd width, tiny
        reductions): the loops as they are, the spatial ones but the innermost fused and run in
        parallel when the kernel is large; LLVM vectorizes the inner loop itself."""

        def apply(self, func, target, _tunable):
            opened = _open_single_reduction(self, func, target)
            if opened is None:
                return None
            sch, block, before, after, kinds = opened
            spatial = [lp for lp, k, _, _ in kinds if k == "S"]
            reduce_ = [lp for lp, k, _, _ in kinds if k == "R"]
            if not spatial:
                return None
            work = math.prod(e for _, _, e, _ in kinds)
            sch.reorder(*spatial, *reduce_)
            outer = spatial[:-1] if len(spatial) > 1 else spatial
            if work >= PARALLEL_MIN_WORK:
                fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
                _maybe_parallel(sch, fused, work)
            vbits = vector_bits(target)
            for b in before + after:
                schedule_injective_block(sch, b, vbits)
            return sch

    class MultiReduction(CPUScheduleRule):
        """Several reductions over the same rows (softmax, layer norm): TVM's dlight.cpu.Reduction.

        Its matcher also takes conv2d/pooling (one reduction plus elementwise blocks), and rows whose
        leading axis differs between blocks (a [1, 1000] softmax: it then recomputes every reduction
        per element). So it is asked only about kernels with two or more reduction blocks that all
        share the same leading spatial extent."""

        def __init__(self, inner):
            self.inner = inner

        def apply(self, func, target, tunable):
            if not self.is_target_available(target):
                return None
            sch = s_tir.Schedule(func)
            infos = normalize_prim_func(sch)
            if infos is None or sum(1 for b in infos if not b.is_injective()) < 2:
                return None
            leads = []
            for b in infos:
                kinds = b.dom_kind()
                n = len(kinds) - len(kinds.lstrip("S"))
                lead = tuple(b.dom()[:n])
                if n == 0 or not all(isinstance(d, int) for d in lead):
                    return None
                leads.append(lead)
            shortest = min(len(x) for x in leads)
            if len({x[:shortest] for x in leads}) != 1 or math.prod(leads[0][:shortest]) < 2:
                return None
            work = sum(math.prod(d if isinstance(d, int) else 1 for d in b.dom()) for b in infos)
            if work < PARALLEL_MIN_WORK:
                return None  # its rows always run in parallel: not worth a thread-pool launch here
            return self.inner.apply(func, target, tunable)

    class Injective(CPUScheduleRule):
        """Only spatial blocks: inline what can be, then each remaining loop nest fused, parallel
        when large, vectorized when its inner extent is a multiple of the vector."""

        def apply(self, func, target, _tunable):
            if not self.is_target_available(target):
                return None
            sch = s_tir.Schedule(func)
            blocks = _root_blocks(sch)
            if not blocks or not all(_is_spatial(sch, b) for b in blocks):
                return None
            blocks = _inline_spatial(sch, blocks, keep_padding=False)
            vbits = vector_bits(target)
            for b in blocks:
                schedule_injective_block(sch, b, vbits)
            return sch

    class Fallback(CPUScheduleRule):
        """Any other kernel, one root block at a time: spatial blocks as Injective does; reduction
        blocks parallel over their leading spatial loops when large."""

        def apply(self, func, target, _tunable):
            if not self.is_target_available(target):
                return None
            sch = s_tir.Schedule(func)
            blocks = _root_blocks(sch)
            if not blocks:
                return None
            vbits = vector_bits(target)
            for b in blocks:
                if _is_spatial(sch, b):
                    schedule_injective_block(sch, b, vbits)
                    continue
                kinds = _loop_kinds(sch, b)
                if kinds is None:
                    continue
                lead = []
                for lp, k, _, _ in kinds:
                    if k != "S":
                        break
                    lead.append(lp)
                if lead:
                    fused = sch.fuse(*lead) if len(lead) > 1 else lead[0]
                    _maybe_parallel(sch, fused, math.prod(e for _, _, e, _ in kinds))
            return sch

    return {"TensorizedConv": TensorizedConv, "TensorizedDense": TensorizedDense, "TiledReduction": TiledReduction, "RowReduction": RowReduction,
            "Untiled": Untiled,
            "MultiReduction": MultiReduction, "Injective": Injective, "Fallback": Fallback}


def _move_last_map(ndim: int, dim: int):
    """The IndexMap (i_0, .., i_dim, .., i_n) -> (i_0, .., i_n, i_dim)."""
    from tvm.tirx.function import IndexMap

    def fn(*idx):
        return (*[x for d, x in enumerate(idx) if d != dim], idx[dim])

    return IndexMap.from_func(fn, ndim=ndim)


def _pack_map(ndim: int, dim: int, vi: int):
    """The IndexMap (i_0, .., i_dim, .., i_n) -> (i_dim // vi, i_0, .., i_n, i_dim % vi)."""
    from tvm.tirx.function import IndexMap

    def fn(*idx):
        rest = [x for d, x in enumerate(idx) if d != dim]
        return (idx[dim] // vi, *rest, idx[dim] % vi)

    return IndexMap.from_func(fn, ndim=ndim)


_RULES = None


def default_rules() -> list:
    """The rules, in the order they are tried."""
    global _RULES
    if _RULES is None:
        from tvm.s_tir import dlight

        mine = _make_rules()
        _RULES = [mine["TensorizedConv"](), mine["TensorizedDense"](), mine["TiledReduction"](), mine["RowReduction"](), mine["Untiled"](),
                  mine["MultiReduction"](dlight.cpu.Reduction()), mine["Injective"](), mine["Fallback"]()]
    return list(_RULES)


# ----------------------------------------------------------------------------- the pass

def _is_scheduled(func) -> bool:
    return func.attrs is not None and bool(func.attrs.get("tirx.is_scheduled", False))


def schedule_func(func, target, rules=None):
    """(scheduled PrimFunc, rule name) for one kernel; (None, None) when no rule applies."""
    for rule in rules if rules is not None else default_rules():
        try:
            sch = rule.apply(func, target, False)
            if sch is None:
                continue
            if isinstance(sch, list):
                sch = sch[0]
            new = sch.mod["main"]
        except Exception:  # noqa: BLE001 - a rule that trips on this kernel: try the next one
            continue
        return new.with_attr("tirx.is_scheduled", True), type(rule).__name__
    return None, None


class DefaultScheduleReport:
    """What the pass did: {kernel name: rule name or None}, and how long it took."""

    def __init__(self):
        self.kernels: dict[str, str | None] = {}
        self.seconds = 0.0

    @property
    def scheduled(self) -> int:
        return sum(1 for r in self.kernels.values() if r)

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for r in self.kernels.values():
            counts[r or "none"] = counts.get(r or "none", 0) + 1
        detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        return (f"default schedule for {self.scheduled} of {len(self.kernels)} untuned kernels "
                f"({detail}; {self.seconds:.2f}s)")


def apply_default_schedule(mod, target, rules=None, report: DefaultScheduleReport | None = None):
    """Schedule every PrimFunc of `mod` that is not scheduled yet (no tuning record) for the CPU
    `target` (a tvm Target). Returns a new module; `mod` is not changed."""
    from tvm import tirx

    start = time.perf_counter()
    if not is_cpu(target):
        return mod
    updates = {}
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or _is_scheduled(func):
            continue
        new, rule = schedule_func(func, target, rules)
        if report is not None:
            report.kernels[gv.name_hint] = rule
        if new is not None:
            updates[gv] = new
    if updates:
        mod = mod.clone()
        for gv, func in updates.items():
            mod[gv] = func
    if report is not None:
        report.seconds += time.perf_counter() - start
    return mod


def DefaultSchedule(target=None, report: DefaultScheduleReport | None = None):  # noqa: N802 - a pass factory
    """The module pass: ``DefaultSchedule()(mod)`` under ``with target:``, or with an explicit target."""
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="qcompile.DefaultSchedule")
    def _pass(mod, _ctx):
        tgt = target if target is not None else tvm.target.Target.current(allow_none=True)
        return apply_default_schedule(mod, tgt, report=report)

    return _pass
