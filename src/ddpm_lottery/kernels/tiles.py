"""The ``Linear`` kernels: a sparse weight times a batch of token rows, a tile of rows at a time.

A ``Linear`` input is ``(rows, in_features)``: a batch of feature vectors, or a transformer's B x T
tokens.  The vector units want the rows innermost, so each thread takes a *tile* of ``TILE`` rows,
transposes it into a buffer of ``(in_features, TILE)`` that stays in its core's cache, and every
output unit then reads its surviving inputs from there:

    forward (and input grad)   yt[o][0:TILE]  += value[k] * xt[index[k]][0:TILE]    (CSR over outputs)
    weight grad                grad_value[k]  += yt_grad[o(k)][0:TILE] . xt[index[k]][0:TILE]

The input gradient is the forward kernel run with the weight's transpose (the CSC order of the same
values) over the output gradient: one kernel for both.  The convolutions' forward and input gradient
(:mod:`ddpm_lottery.kernels.jit`, :mod:`ddpm_lottery.kernels.conv_grads`) run the same register loop with an
offset per weight into its plane (:func:`_shifted_tile`).

Why it is built this way (measured on 1 core of an AMD EPYC Zen 5 with AVX-512, process time, 87.5 %
sparse, 3,136 x 384 -> 384; the machine was shared):
- the earlier route transposed the whole batch into (in_features, rows) planes and streamed every
  surviving input's plane of all the rows through one output's accumulator: each plane was read from
  memory once per output that uses it (1.8x against oneDNN's dense ``Linear``).  A tile of 128 rows
  keeps those reads in the core's L2 and the accumulator in L1 (2.3-3.9x); 32 rows leave the
  vector loops too short (1.7x), 256 rows spill the cache at 1,536 features;
- an output's whole tile of sums stays in registers across its surviving weights (:func:`_output_tile`,
  written as LLVM IR): one load and one multiply-add per 16 rows and weight.  Before (2026-12-07), eight
  weights shared one pass over an accumulator in memory (one load and one store of it per eight
  multiply-adds).  `python benchmarks/token_linear.py --rows 3136 --densities 0.125 --threads 1` (idle,
  alternating with the previous commit): forward 1.9-3.2x before, 2.1-3.4x with the register sums and
  3.7-4.4x from 384 features with the register transposes below;
- ``TILE`` is a compile-time constant, so the inner loops have a fixed trip count that LLVM unrolls
  into whole AVX-512 vectors, with no remainder loop;
- the transposes move 16 x 16 blocks through registers (:func:`_transpose16`): at 96 features they are
  still about half of the time (what bounds narrow layers: the multiply-adds per input float are few);
- the outputs are computed 16 at a time into a (16, TILE) buffer and written back to rows at once, while
  it is in L1: a whole (outputs, TILE) buffer read back by columns afterwards thrashed L1 and, at 96 -> 384,
  cost twice the multiply-adds (issue 35: forward 1.5-1.9x faster at 96 -> 384, 1.3x at 96 -> 96).

Every output element (and every weight gradient) is summed by one thread in a fixed order that
depends on the shape only, never on the thread count: resume stays bit-exact for a kernel choice.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

TILE = 128  # rows of a tile (a multiple of 16: whole AVX-512 vectors)
BLOCK = 16  # outputs computed, then written back to rows while still in L1
GRADIENT_GROUPS = 8  # partial sums of the weight gradient, fixed so that the result ignores the thread count

_JIT = dict(parallel=True, fastmath=True, cache=True, nogil=True)


def _contiguous_floats(*arrays) -> bool:
    """Whether numba typed every one of ``arrays`` as a C-contiguous float32 array (what the intrinsics'
    pointer arithmetic assumes; anything else fails to compile rather than reading the wrong floats)."""
    return all(isinstance(a, types.Array) and a.layout == "C" and a.dtype == types.float32 for a in arrays)


@intrinsic
def _transpose16(typingctx, src, src_row, src_col, dst, dst_row, dst_col):
    """dst[dst_row + c, dst_col + i] = src[src_row + i, src_col + c] for i, c < 16: one 16 x 16 block, in
    registers (16 vector loads, four rounds of 16 two-vector shuffles, 16 vector stores), where numba's
    loops moved it element by element (about twice as slow, timed on the transposes alone)."""
    if not _contiguous_floats(src, dst):
        return None  # the pointer arithmetic below assumes C-contiguous float32 rows: refuse anything else
    sig = types.void(src, types.int64, types.int64, dst, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        src_value, first_row, first_col, dst_value, out_row, out_col = args
        src_array = context.make_array(signature.args[0])(context, builder, src_value)
        dst_array = context.make_array(signature.args[3])(context, builder, dst_value)
        i32, i64 = ir.IntType(32), ir.IntType(64)
        vector = ir.VectorType(ir.FloatType(), 16)

        def line(array, row, col, i):
            """A pointer to array[row + i, col], as 16 floats."""
            row_bytes = builder.extract_value(array.strides, 0)
            offset = builder.add(
                builder.mul(builder.add(row, ir.Constant(i64, i)), row_bytes), builder.mul(col, ir.Constant(i64, 4))
            )
            return builder.inttoptr(builder.add(builder.ptrtoint(array.data, i64), offset), vector.as_pointer())

        rows = [builder.load(line(src_array, first_row, first_col, i), align=4) for i in range(16)]
        half = 8
        while half:  # swap the off-diagonal half x half blocks of every 2half x 2half block
            swapped = list(rows)
            for a in (r for r in range(16) if not r & half):
                b = a + half
                low = [c if not c & half else 16 + c - half for c in range(16)]  # a's row: a | b's first half
                high = [c + half if not c & half else 16 + c for c in range(16)]  # b's row: a's second half | b
                swapped[a] = builder.shuffle_vector(rows[a], rows[b], ir.Constant(ir.VectorType(i32, 16), low))
                swapped[b] = builder.shuffle_vector(rows[a], rows[b], ir.Constant(ir.VectorType(i32, 16), high))
            rows = swapped
            half //= 2
        for c, row in enumerate(rows):
            builder.store(row, line(dst_array, out_row, out_col, c), align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(inline="always", fastmath=True, nogil=True)
def _transpose_in(src, first, count, dst):
    """dst[c, j] = src[first + j, c] for j < count, and 0 for count <= j < TILE: a tile of rows, transposed."""
    width = src.shape[1]
    c0 = 0
    while c0 + 16 <= width:
        j = 0
        while j + 16 <= count:
            _transpose16(src, first + j, c0, dst, c0, j)
            j += 16
        for c in range(c0, c0 + 16):
            for i in range(j, count):
                dst[c, i] = src[first + i, c]
            for i in range(count, TILE):
                dst[c, i] = 0.0
        c0 += 16
    for c in range(c0, width):
        for i in range(count):
            dst[c, i] = src[first + i, c]
        for i in range(count, TILE):
            dst[c, i] = 0.0


@njit(inline="always", fastmath=True, nogil=True)
def _transpose_out(src, count, dst, first, o0, block):
    """dst[first + j, o0 + c] = src[c, j] for j < count and c < block: a block of outputs, back to rows.

    The block (at most BLOCK outputs) was just computed and is still in L1; a whole (outputs, TILE) buffer
    read back column by column thrashed it (a 512-byte stride maps every read onto eight sets): at 384
    outputs that transpose took twice the multiply-adds' time."""
    if block == BLOCK:
        whole = count // 16 * 16
        for j in range(0, whole, 16):
            _transpose16(src, 0, j, dst, first + j, o0)
        for j in range(whole, count):  # a constant trip count: the 16 reads become one vector gather and one store
            line = dst[first + j]
            for c in range(BLOCK):
                line[o0 + c] = src[c, j]
    else:
        for j in range(count):
            line = dst[first + j]
            for c in range(block):
                line[o0 + c] = src[c, j]


def _tile_sums(context, builder, first, stop, bias_value, values_array, acc_array, line_of):
    """Emit acc[0:TILE] = bias + the sum over k in [first, stop) of values[k] * line_of(k)[0:TILE], in the order
    of k, with the tile's TILE / 16 vectors in registers (a phi node each) across the whole loop; ``line_of``
    emits the pointer to weight k's first 16 floats.  The loop both intrinsics below share."""
    i32, i64 = ir.IntType(32), ir.IntType(64)
    vector = ir.VectorType(ir.FloatType(), 16)
    fma = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vector, [vector, vector, vector]), "llvm.fmuladd.v16f32"
    )

    def splat(scalar):
        lane = builder.insert_element(ir.Constant(vector, ir.Undefined), scalar, ir.Constant(i32, 0))
        return builder.shuffle_vector(
            lane, ir.Constant(vector, ir.Undefined), ir.Constant(ir.VectorType(i32, 16), [0] * 16)
        )

    bias_vector = splat(bias_value)
    entry = builder.block
    header = builder.append_basic_block("tile.header")
    body = builder.append_basic_block("tile.body")
    done = builder.append_basic_block("tile.done")
    builder.branch(header)
    builder.position_at_end(header)
    k = builder.phi(i64)
    k.add_incoming(first, entry)
    sums = []
    for _ in range(TILE // 16):
        phi = builder.phi(vector)
        phi.add_incoming(bias_vector, entry)
        sums.append(phi)
    builder.cbranch(builder.icmp_signed("<", k, stop), body, done)
    builder.position_at_end(body)
    weight = splat(builder.load(builder.gep(values_array.data, [k])))
    line = builder.inttoptr(line_of(k), vector.as_pointer())
    added = [
        builder.call(fma, [weight, builder.load(builder.gep(line, [ir.Constant(i64, v)]), align=4), total])
        for v, total in enumerate(sums)
    ]
    following = builder.add(k, ir.Constant(i64, 1))
    latch = builder.block
    builder.branch(header)
    k.add_incoming(following, latch)
    for phi, value in zip(sums, added):
        phi.add_incoming(value, latch)
    builder.position_at_end(done)
    out = builder.bitcast(acc_array.data, vector.as_pointer())
    for v, total in enumerate(sums):
        builder.store(total, builder.gep(out, [ir.Constant(i64, v)]), align=4)


def _load_index(builder, array, k, dtype):
    """array[k] of an integer array, as an i64."""
    value = builder.load(builder.gep(array.data, [k]))
    return builder.sext(value, ir.IntType(64)) if dtype.bitwidth < 64 else value


@intrinsic
def _output_tile(typingctx, xt, index, values, start, end, bias, acc):
    """acc[0:TILE] = bias + the sum over k in [start, end) of values[k] * xt[index[k], 0:TILE], in the order of k.

    The tile's TILE / 16 vectors stay in registers across all of an output's weights: one load and one
    multiply-add per vector and weight.  numba's own loops keep an accumulator in memory (a load and a store
    of it per pass over the weights), and at most 8 weights could share a pass (timed on the multiply-adds
    alone, one Zen 5 core: 1.45-2x slower than this loop).  LLVM cannot keep an array in registers across a
    loop, so the loop is written as LLVM IR here: a phi node per vector.  ``llvm.fmuladd`` fuses the multiply
    and the add where the CPU has FMA (and computes them apart where it has not, rather than calling
    ``fmaf``); compiled for AVX2 (``NUMBA_CPU_NAME=haswell``) the loop still gained 1.3-1.45x there."""
    if not (_contiguous_floats(xt, values, acc) and index.layout == "C" and isinstance(index.dtype, types.Integer)):
        return None  # the pointer arithmetic below assumes C-contiguous arrays: refuse anything else
    sig = types.void(xt, index, values, types.int64, types.int64, types.float32, acc)

    def codegen(context, builder, signature, args):
        xt_value, index_value, values_value, first, stop, bias_value, acc_value = args
        xt_array = context.make_array(signature.args[0])(context, builder, xt_value)
        index_array = context.make_array(signature.args[1])(context, builder, index_value)
        row_bytes = builder.extract_value(xt_array.strides, 0)
        base = builder.ptrtoint(xt_array.data, ir.IntType(64))

        def line_of(k):
            return builder.add(base, builder.mul(_load_index(builder, index_array, k, index.dtype), row_bytes))

        values_array = context.make_array(signature.args[2])(context, builder, values_value)
        acc_array = context.make_array(signature.args[6])(context, builder, acc_value)
        _tile_sums(context, builder, first, stop, bias_value, values_array, acc_array, line_of)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _shifted_tile(typingctx, planes, plane, offset, values, start, end, column, bias, acc):
    """acc[0:TILE] = bias + the sum over k in [start, end) of
    values[k] * planes[plane[k], offset[k] + column : offset[k] + column + TILE], in the order of k.

    The convolutions' form of :func:`_output_tile` (their forward and input gradient): a surviving weight
    reads its plane from its own offset on.  The reads run up to TILE - 1 floats past ``column + offset[k]``'s
    useful span, so the caller leaves TILE floats of slack after the planes' last row."""
    if not (
        _contiguous_floats(planes, values, acc)
        and all(a.layout == "C" and isinstance(a.dtype, types.Integer) for a in (plane, offset))
    ):
        return None  # the pointer arithmetic below assumes C-contiguous arrays: refuse anything else
    sig = types.void(planes, plane, offset, values, types.int64, types.int64, types.int64, types.float32, acc)

    def codegen(context, builder, signature, args):
        planes_value, plane_value, offset_value, values_value, first, stop, column, bias_value, acc_value = args
        i64 = ir.IntType(64)
        planes_array = context.make_array(signature.args[0])(context, builder, planes_value)
        plane_array = context.make_array(signature.args[1])(context, builder, plane_value)
        offset_array = context.make_array(signature.args[2])(context, builder, offset_value)
        row_bytes = builder.extract_value(planes_array.strides, 0)
        base = builder.add(builder.ptrtoint(planes_array.data, i64), builder.mul(column, ir.Constant(i64, 4)))

        def line_of(k):
            row = builder.mul(_load_index(builder, plane_array, k, plane.dtype), row_bytes)
            shift = builder.mul(_load_index(builder, offset_array, k, offset.dtype), ir.Constant(i64, 4))
            return builder.add(base, builder.add(row, shift))

        values_array = context.make_array(signature.args[3])(context, builder, values_value)
        acc_array = context.make_array(signature.args[8])(context, builder, acc_value)
        _tile_sums(context, builder, first, stop, bias_value, values_array, acc_array, line_of)
        return context.get_dummy_value()

    return sig, codegen


@njit(**_JIT)
def forward(x, indptr, index, values, bias, threads, out):
    """out (rows, O) = x (rows, I) times the sparse weight (CSR over the O outputs: indptr, index, values) + bias.

    One job is a tile of rows and a share of the outputs: the outputs are shared only when the tiles are
    too few to keep every thread busy (a time embedding's 64 rows), and each job transposes its tile itself.
    Each of ``workers`` runs every workers-th job with buffers allocated once (a fresh 200 kB buffer a job
    cost page faults worth a third of a narrow layer's time); which worker runs a job does not change its
    sums, so the bits do not depend on the thread count.
    """
    rows, width = x.shape
    outputs = indptr.shape[0] - 1
    tiles = (rows + TILE - 1) // TILE
    shares = min(max(1, (2 * threads + tiles - 1) // tiles), max(1, outputs // 16))
    share = (outputs + shares - 1) // shares
    jobs = tiles * shares
    workers = max(1, min(threads, jobs))
    for worker in prange(workers):
        xt = np.empty((width, TILE), np.float32)
        yt = np.empty((BLOCK, TILE), np.float32)
        for job in range(worker, jobs, workers):
            tile = job // shares
            start = (job - tile * shares) * share
            stop = min(outputs, start + share)
            first = tile * TILE
            count = min(TILE, rows - first)
            _transpose_in(x, first, count, xt)
            for o0 in range(start, stop, BLOCK):
                block = min(BLOCK, stop - o0)
                for c in range(block):
                    o = o0 + c
                    _output_tile(xt, index, values, indptr[o], indptr[o + 1], bias[o], yt[c])
                _transpose_out(yt, count, out, first, o0, block)


@njit(inline="always", fastmath=True, nogil=True)
def _gradient_tile(xt, gt, indptr, index, partial):
    """partial[k] += gt[o(k)] . xt[index[k]] over one tile (four weights share each load of the gradient)."""
    outputs = indptr.shape[0] - 1
    for o in range(outputs):
        g = gt[o]
        k = indptr[o]
        end = indptr[o + 1]
        while k + 4 <= end:
            x0 = xt[index[k]]
            x1 = xt[index[k + 1]]
            x2 = xt[index[k + 2]]
            x3 = xt[index[k + 3]]
            s0 = np.float32(0.0)
            s1 = np.float32(0.0)
            s2 = np.float32(0.0)
            s3 = np.float32(0.0)
            for i in range(TILE):
                gi = g[i]
                s0 += gi * x0[i]
                s1 += gi * x1[i]
                s2 += gi * x2[i]
                s3 += gi * x3[i]
            partial[k] += s0
            partial[k + 1] += s1
            partial[k + 2] += s2
            partial[k + 3] += s3
            k += 4
        while k < end:
            xs = xt[index[k]]
            s = np.float32(0.0)
            for i in range(TILE):
                s += g[i] * xs[i]
            partial[k] += s
            k += 1


@njit(**_JIT)
def weight_grad(x, grads, indptr, index, out):
    """out[k] = sum over rows r of grads[r, o(k)] * x[r, index[k]]: the weight gradient at the surviving
    positions only.  Tile t adds into partial sum t % GRADIENT_GROUPS, and the partial sums are added in
    their order: a fixed order for a shape, whatever the thread count."""
    rows, width = x.shape
    outputs = grads.shape[1]
    tiles = (rows + TILE - 1) // TILE
    groups = min(tiles, GRADIENT_GROUPS)
    partials = np.zeros((groups, out.shape[0]), np.float32)
    for group in prange(groups):
        xt = np.empty((width, TILE), np.float32)
        gt = np.empty((outputs, TILE), np.float32)
        for tile in range(group, tiles, groups):
            first = tile * TILE
            count = min(TILE, rows - first)
            _transpose_in(x, first, count, xt)
            _transpose_in(grads, first, count, gt)
            _gradient_tile(xt, gt, indptr, index, partials[group])
    out[:] = partials[0]
    for group in range(1, groups):
        out += partials[group]


def warm_up(training: bool = False) -> None:
    """Compile (or load from numba's disk cache) the kernels once, on one weight."""
    x = np.ones((1, 1), np.float32)
    indptr = np.array([0, 1], np.int64)
    index = np.zeros(1, np.int64)
    values = np.ones(1, np.float32)
    forward(x, indptr, index, values, np.zeros(1, np.float32), 1, np.empty((1, 1), np.float32))
    if training:
        weight_grad(x, x, indptr, index, np.empty(1, np.float32))
