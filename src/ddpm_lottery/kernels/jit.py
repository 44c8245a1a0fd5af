"""The sparse kernels themselves, compiled by numba for the CPU's vector units.

Every kernel works on *planes*: an input image is laid out as a stack of flattened 2-D planes
(the zero-padded input channels for a stride-1 convolution, their four even/odd phases for a
stride-2 one), and a surviving weight ``k`` is a triple ``(plane[k], offset[k], value[k])``.  Then
every convolution is the same computation, a *direct* sparse convolution over contiguous memory:

    forward                 acc[o][0:L]          += value[k] * planes[plane[k]][offset[k] : offset[k] + L]

where ``L`` covers the output plane with the input's row pitch (two junk columns a row for a 3x3
convolution, dropped when the result is written out); the gradients are the same computation
transposed (:mod:`ddpm_lottery.kernels.conv_grads`).  The work is one multiply-add per surviving
weight and output position: it scales with the ticket's density, not the dense layer's size.
``Linear`` layers have kernels of their own, over tiles of token rows (:mod:`ddpm_lottery.kernels.tiles`).

How the forward's inner loop got here (the first three measured on 2 AVX-512 cores, 128->128 3x3 at 32x32, batch
64, 87.5 %):
- the accumulator is a local buffer, never a view of the output: numba cannot prove a view does not
  alias the input, and the loop stops vectorising (4-5x slower);
- the inner loops read slices (``xs = planes[n, c, a:b]``) rather than ``planes[n, c, a + i]``:
  a computed index keeps numba's negative-index wrap-around check in the loop and blocks
  vectorisation (3.8 against 22 GFLOP/s);
- four surviving weights shared one pass over the accumulator (one load and one store of ``acc``
  for four multiply-adds instead of four): 2.0x -> 2.7x against oneDNN's dense convolution;
- since then an output channel is computed a tile of TILE (128) positions at a time, the tile's sums held
  in registers across all of the channel's surviving weights (:func:`~ddpm_lottery.kernels.tiles._shifted_tile`,
  the ``Linear`` kernels' register loop with a per-weight offset): one load and one multiply-add per 16
  positions and weight, no accumulator traffic.  Per layer, one Zen 5 core, batch 64, against the four-a-pass
  loop in one process: 1.13-1.55x at 14x14 and 7x7, 0.99-1.19x at 28x28 (where the accumulator already sat
  in L1; a 7x7 plane fills half a tile and still gains most).  The planes keep TILE floats of slack after
  the last one, since a tile reads up to TILE - 1 floats past its useful span (into junk positions).

Each kernel computes every output element in one thread, in a fixed order, so results do not
depend on the thread count or the scheduling: resume stays bit-exact for a given kernel choice.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ddpm_lottery.kernels.tiles import TILE, _shifted_tile

# fastmath: lets LLVM vectorise the loops numba compiles (the layout copies); the sums' order is fixed at compile
# time, so a run is repeatable on one machine.  cache: compile once per machine, on disk.
_JIT = dict(parallel=True, fastmath=True, cache=True, nogil=True)


@njit(inline="always", fastmath=True, nogil=True)
def _row(planes, indptr, plane, offset, values, bias, o, pitch, out_rows, out_cols, acc, target):
    """One output channel of one image from its planes (the forward of the module docstring), TILE positions
    at a time, each tile's sums held in registers across the channel's surviving weights
    (:func:`~ddpm_lottery.kernels.tiles._shifted_tile`); ``acc`` is (tiles, TILE), covering the length."""
    tiles = acc.shape[0]
    for t in range(tiles):
        _shifted_tile(planes, plane, offset, values, indptr[o], indptr[o + 1], t * TILE, bias[o], acc[t])
    sums = acc.reshape(tiles * TILE)
    if pitch == out_cols:
        target[:] = sums[: out_rows * out_cols]
    else:
        for r in range(out_rows):
            target[r * out_cols : (r + 1) * out_cols] = sums[r * pitch : r * pitch + out_cols]


# ----------------------------------------------------------------------------------------------
# Convolutions: the padding (and the phase split of a strided convolution) fused into the kernels.
# F.pad costs a zero fill and a copy of the whole input per layer (a quarter of a `tiny` denoiser
# call, profiled); here each image's planes are laid out in a scratch buffer that stays in the
# core's cache while every output channel reads it.


@njit(inline="always", fastmath=True, nogil=True)
def _fill(image, planes, stride, pad_rows, pad_cols, pitch, phase_rows):
    """Lay one image (C, H, W) out as its zero-padded planes (C * stride**2, S); ``planes`` starts zeroed."""
    channels, height, width = image.shape
    phases = stride * stride
    for c in range(channels):
        for r in range(height):
            padded_row = r + pad_rows
            if stride == 1:
                start = padded_row * pitch + pad_cols
                planes[c, start : start + width] = image[c, r]
            else:
                # the columns of one parity land in one phase plane, contiguously (an element at a time,
                # with a division and a remainder each, was half a stride-2 layer's forward time)
                first = c * phases + (padded_row % stride) * stride
                base = (padded_row // stride) * pitch
                if stride == 2:  # both parities in one loop: LLVM loads the row as vectors and shuffles them
                    even = _phase_line(planes, first, base, 0, pad_cols, 2, width)
                    odd = _phase_line(planes, first, base, 1, pad_cols, 2, width)
                    src = image[c, r]
                    for t in range(odd.shape[0]):
                        even[t] = src[2 * t]
                        odd[t] = src[2 * t + 1]
                    if width % 2 == 1:
                        even[width // 2] = src[width - 1]
                else:
                    for parity in range(min(stride, width)):
                        _phase_line(planes, first, base, parity, pad_cols, stride, width)[:] = image[
                            c, r, parity::stride
                        ]


@njit(inline="always", fastmath=True, nogil=True)
def _phase_line(planes, first_plane, base, parity, pad_cols, stride, width):
    """Where the input columns parity, parity + stride, ... of one row lie in their phase plane."""
    padded_col = parity + pad_cols
    start = base + padded_col // stride
    return planes[first_plane + padded_col % stride, start : start + (width - parity + stride - 1) // stride]


@njit(inline="always", fastmath=True, nogil=True)
def _unfill(planes, image, stride, pad_rows, pad_cols, pitch):
    """The inverse of :func:`_fill`: the padded planes' gradient back to the image's (C, H, W)."""
    channels, height, width = image.shape
    phases = stride * stride
    for c in range(channels):
        for r in range(height):
            padded_row = r + pad_rows
            if stride == 1:
                start = padded_row * pitch + pad_cols
                image[c, r, :] = planes[c, start : start + width]
            else:
                first = c * phases + (padded_row % stride) * stride
                base = (padded_row // stride) * pitch
                if stride == 2:
                    even = _phase_line(planes, first, base, 0, pad_cols, 2, width)
                    odd = _phase_line(planes, first, base, 1, pad_cols, 2, width)
                    dst = image[c, r]
                    for t in range(odd.shape[0]):
                        dst[2 * t] = even[t]
                        dst[2 * t + 1] = odd[t]
                    if width % 2 == 1:
                        dst[width - 1] = even[width // 2]
                else:
                    for parity in range(min(stride, width)):
                        image[c, r, parity::stride] = _phase_line(planes, first, base, parity, pad_cols, stride, width)


@njit(fastmath=True, cache=True, nogil=True)
def fill_serial(x, stride, pad_rows, pad_cols, pitch, phase_rows, planes):
    """Every image's planes (N, P, S), in one thread (``planes`` zeroed): compiled apart, since inside a parallel function
    numba would turn each row's copy into a parallel region of its own."""
    for n in range(x.shape[0]):
        _fill(x[n], planes[n], stride, pad_rows, pad_cols, pitch, phase_rows)


@njit(**_JIT)
def conv_forward(
    x,
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
    values,
    bias,
    out_rows,
    out_cols,
    threads,
    out,
):
    """out (N, O, out_rows * out_cols) = the sparse convolution of x (N, C, H, W).

    With at least two images a thread, a thread owns whole images: it lays one out in its scratch
    planes and computes every output channel from them while they are in its cache.  With fewer
    (batch 1 while sampling), the planes are laid out first and the threads share the output channels.
    """
    batch = x.shape[0]
    rows = indptr.shape[0] - 1
    tiles = (out_rows * pitch + TILE - 1) // TILE  # the output rows at the planes' pitch, in whole tiles
    if batch >= 2 * threads:
        # a few runs of images a thread, each with one scratch buffer: zeroed once (the fill writes only the
        # padding's interior), and not allocated per image (a stride-2 layer's 0.6 MB, paged in afresh each
        # time, cost as much as its multiply-adds)
        runs = min(batch, 4 * threads)
        for run in prange(runs):
            # TILE floats of slack after the last plane: a tile's reads run past the useful span
            scratch = np.zeros(planes_per_image * plane_size + TILE, np.float32)
            planes = scratch[: planes_per_image * plane_size].reshape((planes_per_image, plane_size))
            acc = np.empty((tiles, TILE), np.float32)
            for n in range(run * batch // runs, (run + 1) * batch // runs):
                _fill(x[n], planes, stride, pad_rows, pad_cols, pitch, phase_rows)
                for o in range(rows):
                    _row(planes, indptr, plane, offset, values, bias, o, pitch, out_rows, out_cols, acc, out[n, o])
    else:
        # laid out serially: a parallel region costs more than a few images' copy (one region, not two)
        image_floats = planes_per_image * plane_size
        scratch = np.zeros(batch * image_floats + TILE, np.float32)
        planes = scratch[: batch * image_floats].reshape((batch, planes_per_image, plane_size))
        fill_serial(x, stride, pad_rows, pad_cols, pitch, phase_rows, planes)
        jobs = batch * rows
        workers = max(1, min(threads, jobs))
        for worker in prange(workers):  # each worker's tiles allocated once, not a job (a job can be 50 ns of work)
            acc = np.empty((tiles, TILE), np.float32)
            for job in range(worker, jobs, workers):
                n = job // rows
                o = job - n * rows
                _row(planes[n], indptr, plane, offset, values, bias, o, pitch, out_rows, out_cols, acc, out[n, o])


def warm_up() -> None:
    """Compile (or load from the on-disk cache) the forward kernel once, on a problem of one weight; the
    gradients' kernel loads apart (:func:`ddpm_lottery.kernels.conv_grads.warm_up`), for training only:
    loading is not free (seconds)."""
    index = np.zeros(1, np.int64)
    conv_forward(
        np.ones((1, 1, 1, 2), np.float32),
        1, 0, 0, 2, 1, 2, 1,
        np.array([0, 1], np.int64), index, index, np.ones(1, np.float32), np.zeros(1, np.float32),
        1, 2, 1,
        np.empty((1, 1, 2), np.float32),
    )  # fmt: skip
