"""A sparse convolution's three gradients in one pass over each image (training's backward).

For each image, in the planes of :mod:`ddpm_lottery.kernels.jit` (``L`` = the output rows at the
planes' pitch, ``k`` a surviving weight, ``o(k)`` its output channel):

    output grad     g[o][0:L]             = grad_out[n, o] laid out at the planes' pitch, zeros in the junk columns
    bias grad       grad_bias[o]         += sum(g[o])
    weight grad     grad_value[k]        += g[o(k)] . planes[plane[k]][offset[k] : offset[k] + L]
    input grad      acc[p][j]             = sum over k of plane p: value[k] * g[o(k)][j - offset[k]]   (CSC order),
                    then acc, the padded planes' gradient, unfilled into grad_x[n]

The input gradient *gathers*: g is laid out ``reach`` (the largest offset) floats into a zeroed row, so
j - offset[k] is a contiguous read from reach - offset[k] on, and a plane's gradient is the forward kernel's
computation over the output gradients: a tile of TILE positions at a time, its sums in registers across the
plane's weights (:func:`~ddpm_lottery.kernels.tiles._shifted_tile`; before, four weights shared a pass over
an accumulator in memory: the backward, weight gradient included, is 1.05-1.22x faster per layer, one Zen 5
core, batch 64).  Scattering instead (acc[p][offset[k]:] += value[k] * g) could share a pass only among
weights of equal offset, about two at 93.75 %: 15 against 18 GFMA/s.

Why one pass per image (measured on 1 core of an AMD EPYC Zen 5, thread clock, batch 64, 93.75 %
sparse; the machine was shared): the earlier backward ran three passes over the whole batch, each with
its own buffers: the output gradient padded to the pitch by torch (twice), every image's planes laid out
at once (15 MB at 64 channels, 28x28, paged in afresh at every call), then the weight gradient read those
planes for each output channel in turn, from memory rather than cache.  Here an image's planes, its
output gradient and its input gradient's accumulator are laid out in a thread's scratch buffers, used by
all three gradients while they sit in the core's cache, and only ``grad_x`` is written to memory.

Bit-exact at any thread count: the batch is cut into chunks of :data:`CHUNK` images, fixed by the batch
size alone; one thread sums a chunk's images in order into the chunk's partial sums, and the partial sums
are added chunk by chunk, in order.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ddpm_lottery.kernels.jit import _fill, _unfill
from ddpm_lottery.kernels.tiles import TILE, _shifted_tile

CHUNK = 4  # images a chunk: enough chunks for two threads at a training batch, few partial sums to add

_JIT = dict(parallel=True, fastmath=True, cache=True, nogil=True)


@njit(inline="always", fastmath=True, nogil=True)
def _dots(planes, gs, plane, offset, k, end, length, partial):
    """partial[j] += gs . planes[plane[j]][offset[j]:offset[j] + length] for j in [k, end): one output
    channel's surviving weights, four a pass over ``gs``."""
    while k + 4 <= end:
        x0 = planes[plane[k], offset[k] : offset[k] + length]
        x1 = planes[plane[k + 1], offset[k + 1] : offset[k + 1] + length]
        x2 = planes[plane[k + 2], offset[k + 2] : offset[k + 2] + length]
        x3 = planes[plane[k + 3], offset[k + 3] : offset[k + 3] + length]
        s0 = np.float32(0.0)
        s1 = np.float32(0.0)
        s2 = np.float32(0.0)
        s3 = np.float32(0.0)
        for i in range(length):
            g = gs[i]
            s0 += g * x0[i]
            s1 += g * x1[i]
            s2 += g * x2[i]
            s3 += g * x3[i]
        partial[k] += s0
        partial[k + 1] += s1
        partial[k + 2] += s2
        partial[k + 3] += s3
        k += 4
    while k < end:
        xs = planes[plane[k], offset[k] : offset[k] + length]
        s = np.float32(0.0)
        for i in range(length):
            s += gs[i] * xs[i]
        partial[k] += s
        k += 1


@njit(**_JIT)
def conv_backward(
    x,
    grad_out,
    stride,
    pad_rows,
    pad_cols,
    pitch,
    phase_rows,
    plane_size,
    planes_per_image,
    indptr,
    plane,
    offset,
    column_indptr,
    column_row,
    column_offset,
    column_values,
    want_input,
    want_weight,
    want_bias,
    grad_x,
    grad_values,
    grad_bias,
):
    """grad_x (N, C, H, W), grad_values (surviving weights, CSR order) and grad_bias (O,) of the sparse
    convolution of x (N, C, H, W), from grad_out (N, O, out_rows, out_cols); each only where asked for."""
    batch = x.shape[0]
    rows, out_rows, out_cols = grad_out.shape[1], grad_out.shape[2], grad_out.shape[3]
    length = out_rows * pitch
    # the input gradient gathers: input position j of a plane reads the output gradient at j - offset[k], so
    # each output gradient is laid out `reach` floats in, and weight k reads it from reach - offset[k] on
    reach = 0
    for k in range(offset.shape[0]):
        reach = max(reach, offset[k])
    column_shift = reach - column_offset
    # the input rows whose gradient is kept (a stride-1 layout's padding rows are not computed)
    first = pad_rows * pitch if stride == 1 else 0
    span = (x.shape[2] if stride == 1 else phase_rows) * pitch
    chunks = (batch + CHUNK - 1) // CHUNK
    partial_values = np.zeros((chunks, plane.shape[0]), np.float32)
    partial_bias = np.zeros((chunks, rows), np.float32)
    tiles = (span + TILE - 1) // TILE  # the input gradient's span of a plane, in whole tiles
    for chunk in prange(chunks):
        # zeros where nothing is copied in: around the output gradient, its junk columns, the planes' padding;
        # and TILE floats of slack after the last row, where the input gradient's last tile reads run past
        scratch = np.zeros(rows * (reach + plane_size) + TILE, np.float32)
        grads = scratch[: rows * (reach + plane_size)].reshape((rows, reach + plane_size))
        planes = np.zeros((planes_per_image, plane_size), np.float32)
        acc = np.empty((planes_per_image, plane_size), np.float32)
        tile = np.empty(TILE, np.float32)
        for n in range(chunk * CHUNK, min(batch, (chunk + 1) * CHUNK)):
            for o in range(rows):
                for r in range(out_rows):
                    grads[o, reach + r * pitch : reach + r * pitch + out_cols] = grad_out[n, o, r]
            if want_bias:
                for o in range(rows):
                    gs = grads[o, reach : reach + length]
                    s = np.float32(0.0)
                    for i in range(length):
                        s += gs[i]
                    partial_bias[chunk, o] += s
            if want_weight:
                _fill(x[n], planes, stride, pad_rows, pad_cols, pitch, phase_rows)
                for o in range(rows):
                    gs = grads[o, reach : reach + length]
                    _dots(planes, gs, plane, offset, indptr[o], indptr[o + 1], length, partial_values[chunk])
            if want_input:
                for p in range(planes_per_image):
                    for t in range(tiles):
                        begin = first + t * TILE
                        _shifted_tile(
                            grads, column_row, column_shift, column_values, column_indptr[p], column_indptr[p + 1],
                            begin, np.float32(0.0), tile,
                        )  # fmt: skip
                        count = min(TILE, span - t * TILE)
                        acc[p, begin : begin + count] = tile[:count]
                _unfill(acc, grad_x[n], stride, pad_rows, pad_cols, pitch)
    _sum_chunks(partial_values, grad_values)
    _sum_chunks(partial_bias, grad_bias)


@njit(inline="always", fastmath=True, nogil=True)
def _sum_chunks(partial, out):
    """out[j] = the chunks' partial sums of j, added in chunk order."""
    for j in range(partial.shape[1]):
        s = np.float32(0.0)
        for chunk in range(partial.shape[0]):
            s += partial[chunk, j]
        out[j] = s


def warm_up() -> None:
    """Compile (or load from numba's disk cache) the backward kernel, on a problem of one weight."""
    index = np.zeros(1, np.int64)
    indptr = np.array([0, 1], np.int64)
    conv_backward(
        np.ones((1, 1, 1, 2), np.float32),
        np.ones((1, 1, 1, 2), np.float32),
        1, 0, 0, 2, 1, 2, 1,
        indptr, index, index, indptr, index, index, np.ones(1, np.float32),
        True, True, True,
        np.empty((1, 1, 1, 2), np.float32), np.empty(1, np.float32), np.empty(1, np.float32),
    )  # fmt: skip
