"""The ``Linear`` kernels: a sparse weight times a batch of token rows, a tile of rows at a time.

A ``Linear`` input is ``(rows, in_features)``: a batch of feature vectors, or a transformer's B x T
tokens.  The vector units want the rows innermost, so each thread takes a *tile* of ``TILE`` rows,
transposes it into a buffer of ``(in_features, TILE)`` that stays in its core's cache, and every
output unit then reads its surviving inputs from there:

    forward (and input grad)   yt[o][0:TILE]  += value[k] * xt[index[k]][0:TILE]    (CSR over outputs)
    weight grad                grad_value[k]  += yt_grad[o(k)][0:TILE] . xt[index[k]][0:TILE]

The input gradient is the forward kernel run with the weight's transpose (the CSC order of the same
values) over the output gradient: one kernel for both.

Why it is built this way (measured on 1 core of an AMD EPYC Zen 5 with AVX-512, process time, 87.5 %
sparse, 3,136 x 384 -> 384; the machine was shared):
- the earlier route transposed the whole batch into (in_features, rows) planes and streamed every
  surviving input's plane of all the rows through one output's accumulator: each plane was read from
  memory once per output that uses it (1.8x against oneDNN's dense ``Linear``).  A tile of 128 rows
  keeps those reads in the core's L2 and the accumulator in L1 (2.3-3.9x); 32 rows leave the
  vector loops too short (1.7x), 256 rows spill the cache at 1,536 features;
- eight surviving weights share one pass over the accumulator (one load and one store of ``yt`` for
  eight multiply-adds), as the convolution kernels share four;
- ``TILE`` is a compile-time constant, so the inner loops have a fixed trip count that LLVM unrolls
  into whole AVX-512 vectors, with no remainder loop;
- the transposes read strided and write 16 floats contiguously: at 96 features they are still about
  half of the time (what bounds narrow layers: the multiply-adds per input float are few);
- the outputs are computed 16 at a time into a (16, TILE) buffer and written back to rows at once, while
  it is in L1: a whole (outputs, TILE) buffer read back by columns afterwards thrashed L1 and, at 96 -> 384,
  cost twice the multiply-adds (issue 35: forward 1.5-1.9x faster at 96 -> 384, 1.3x at 96 -> 96).

Every output element (and every weight gradient) is summed by one thread in a fixed order that
depends on the shape only, never on the thread count: resume stays bit-exact for a kernel choice.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

TILE = 128  # rows of a tile (a multiple of 16: whole AVX-512 vectors)
BLOCK = 16  # outputs computed, then written back to rows while still in L1
GRADIENT_GROUPS = 8  # partial sums of the weight gradient, fixed so that the result ignores the thread count

_JIT = dict(parallel=True, fastmath=True, cache=True, nogil=True)


@njit(inline="always", fastmath=True, nogil=True)
def _transpose_in(src, first, count, dst):
    """dst[c, j] = src[first + j, c] for j < count, and 0 for count <= j < TILE: a tile of rows, transposed."""
    width = src.shape[1]
    c0 = 0
    while c0 + 16 <= width:
        j = 0
        while j + 16 <= count:
            for c in range(16):
                line = dst[c0 + c, j : j + 16]
                for i in range(16):
                    line[i] = src[first + j + i, c0 + c]
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
    if block == BLOCK:  # a constant trip count: the 16 reads become one vector gather and one store
        for j in range(count):
            line = dst[first + j]
            for c in range(BLOCK):
                line[o0 + c] = src[c, j]
    else:
        for j in range(count):
            line = dst[first + j]
            for c in range(block):
                line[o0 + c] = src[c, j]


@njit(inline="always", fastmath=True, nogil=True)
def _output_unit(xt, indptr, index, values, bias, o, acc):
    """acc[0:TILE] = bias[o] + sum over the surviving weights k of output o of values[k] * xt[index[k]]."""
    b = bias[o]
    for i in range(TILE):
        acc[i] = b
    k = indptr[o]
    end = indptr[o + 1]
    while k + 8 <= end:
        x0 = xt[index[k]]
        x1 = xt[index[k + 1]]
        x2 = xt[index[k + 2]]
        x3 = xt[index[k + 3]]
        x4 = xt[index[k + 4]]
        x5 = xt[index[k + 5]]
        x6 = xt[index[k + 6]]
        x7 = xt[index[k + 7]]
        w0 = values[k]
        w1 = values[k + 1]
        w2 = values[k + 2]
        w3 = values[k + 3]
        w4 = values[k + 4]
        w5 = values[k + 5]
        w6 = values[k + 6]
        w7 = values[k + 7]
        for i in range(TILE):
            acc[i] += ((w0 * x0[i] + w1 * x1[i]) + (w2 * x2[i] + w3 * x3[i])) + (
                (w4 * x4[i] + w5 * x5[i]) + (w6 * x6[i] + w7 * x7[i])
            )
        k += 8
    while k + 4 <= end:
        x0 = xt[index[k]]
        x1 = xt[index[k + 1]]
        x2 = xt[index[k + 2]]
        x3 = xt[index[k + 3]]
        w0 = values[k]
        w1 = values[k + 1]
        w2 = values[k + 2]
        w3 = values[k + 3]
        for i in range(TILE):
            acc[i] += (w0 * x0[i] + w1 * x1[i]) + (w2 * x2[i] + w3 * x3[i])
        k += 4
    while k < end:
        xs = xt[index[k]]
        w = values[k]
        for i in range(TILE):
            acc[i] += w * xs[i]
        k += 1


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
                    _output_unit(xt, indptr, index, values, bias, o0 + c, yt[c])
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
