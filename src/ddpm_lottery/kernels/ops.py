"""The kernels as PyTorch operations, with their gradients.

Two doors to the same code:

- in eager mode, :class:`torch.autograd.Function` subclasses call the kernels directly: a
  ``torch.library`` operator costs about 130 us of dispatch a call (measured), more than a whole
  sparse layer at batch 1;
- under ``torch.compile``, the same computations registered as ``ddpm_lottery::sparse_conv2d`` and
  ``ddpm_lottery::sparse_linear`` operators (with fake shapes and the same backward), so the
  compiler traces the network around them as opaque calls instead of breaking its graph.

A convolution's three gradients come from one kernel, one pass over each image
(:func:`~ddpm_lottery.kernels.conv_grads.conv_backward`: the input gradient by the transposed kernel, the
weight gradient at the surviving positions only); a ``Linear``'s input gradient is
:func:`~ddpm_lottery.kernels.tiles.forward` with the weight's CSC order, its weight gradient
:func:`~ddpm_lottery.kernels.tiles.weight_grad`.

One concept past 400 lines: each operation's forward, backward and operator registration sit
together, so the eager and the compiled door cannot drift apart.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from ddpm_lottery.kernels import conv_grads, jit, tiles


def _numpy(tensor: torch.Tensor):
    return tensor.detach().contiguous().numpy()


def match_threads() -> int:
    """Give numba's pool the threads torch was given (--threads, OMP_NUM_THREADS); how many that is.

    Starting numba's pool (its first use in a process) sets OpenMP's thread count of the calling thread
    to ``NUMBA_NUM_THREADS`` (the core count), and torch reads its own count from there once its pool
    has started: a one-thread process silently went on with every core in its dense layers (measured:
    torch.get_num_threads() 1 -> 2 on 2 cores).  So torch's count is read before and put back after.
    """
    wanted = torch.get_num_threads()
    threads = max(1, min(wanted, numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != threads:
        numba.set_num_threads(threads)
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)
    return threads


# ----------------------------------------------------------------------------------------------
# The computations on plain tensors


INDEX = ("indptr", "plane", "offset", "column_indptr", "column_order", "column_row", "column_offset")


def index_arrays(*tensors: torch.Tensor) -> dict:
    """The index tensors (in :data:`INDEX` order) as the numpy arrays the computations take."""
    return dict(zip(INDEX, (_numpy(t) for t in tensors)))


def conv_forward(x, values, bias, index, geometry) -> torch.Tensor:
    stride, pad_rows, pad_cols, pitch, phase_rows, plane_size, planes_per_image, out_rows, out_cols = geometry
    out = np.empty((x.shape[0], len(index["indptr"]) - 1, out_rows, out_cols), np.float32)
    threads = match_threads()
    jit.conv_forward(
        _numpy(x),
        stride,
        pad_rows,
        pad_cols,
        pitch,
        phase_rows,
        plane_size,
        planes_per_image,
        index["indptr"],
        index["plane"],
        index["offset"],
        _numpy(values),
        _numpy(bias),
        out_rows,
        out_cols,
        threads,
        out.reshape(out.shape[0], out.shape[1], -1),
    )
    return torch.from_numpy(out)


def conv_backward(x, grad_out, values, index, geometry, wanted) -> tuple:
    """(grad_x, grad_values, grad_bias), each None unless ``wanted`` (three booleans) asks for it."""
    stride, pad_rows, pad_cols, pitch, phase_rows, plane_size, planes_per_image, _, _ = geometry
    want_input, want_weight, want_bias = wanted
    grad_x = torch.empty(x.shape if want_input else (0, 1, 1, 1), dtype=torch.float32)
    grad_values = np.empty(len(index["plane"]), np.float32)
    grad_bias = np.empty(grad_out.shape[1], np.float32)
    match_threads()
    conv_grads.conv_backward(
        _numpy(x),
        _numpy(grad_out),
        stride,
        pad_rows,
        pad_cols,
        pitch,
        phase_rows,
        plane_size,
        planes_per_image,
        index["indptr"],
        index["plane"],
        index["offset"],
        index["column_indptr"],
        index["column_row"],
        index["column_offset"],
        _numpy(values)[index["column_order"]],
        want_input,
        want_weight,
        want_bias,
        grad_x.numpy(),
        grad_values,
        grad_bias,
    )
    return (
        grad_x if want_input else None,
        torch.from_numpy(grad_values) if want_weight else None,
        torch.from_numpy(grad_bias) if want_bias else None,
    )


def linear_forward(x, values, bias, index) -> torch.Tensor:
    """(rows, O) = x (rows, I) times the sparse weight, plus the bias."""
    out = np.empty((x.shape[0], len(index["indptr"]) - 1), np.float32)
    tiles.forward(_numpy(x), index["indptr"], index["plane"], _numpy(values), _numpy(bias), match_threads(), out)
    return torch.from_numpy(out)


def linear_input_grad(grad_out, values, index, in_features: int) -> torch.Tensor:
    """(rows, I): the forward kernel with the weight's transpose (its CSC order) over the output gradient."""
    grad_x = np.empty((grad_out.shape[0], in_features), np.float32)
    tiles.forward(
        _numpy(grad_out),
        index["column_indptr"],
        index["column_row"],
        _numpy(values)[index["column_order"]],
        np.zeros(in_features, np.float32),
        match_threads(),
        grad_x,
    )
    return torch.from_numpy(grad_x)


def linear_weight_grad(x, grad_out, index) -> torch.Tensor:
    out = np.empty(len(index["plane"]), np.float32)
    match_threads()
    tiles.weight_grad(_numpy(x), _numpy(grad_out), index["indptr"], index["plane"], out)
    return torch.from_numpy(out)


# ----------------------------------------------------------------------------------------------
# The same as torch.library operators (what torch.compile sees)


@torch.library.custom_op("ddpm_lottery::sparse_conv2d", mutates_args=())
def sparse_conv2d(
    x: torch.Tensor,
    values: torch.Tensor,
    bias: torch.Tensor,
    indptr: torch.Tensor,
    plane: torch.Tensor,
    offset: torch.Tensor,
    column_indptr: torch.Tensor,
    column_order: torch.Tensor,
    column_row: torch.Tensor,
    column_offset: torch.Tensor,
    geometry: list[int],
) -> torch.Tensor:
    """The sparse convolution of x (N, C, H, W), padding fused; ``geometry`` =
    [stride, pad_rows, pad_cols, pitch, phase_rows, plane_size, planes_per_image, out_rows, out_cols]."""
    index = index_arrays(indptr, plane, offset, column_indptr, column_order, column_row, column_offset)
    return conv_forward(x, values, bias, index, geometry)


@sparse_conv2d.register_fake
def _(x, values, bias, indptr, plane, offset, column_indptr, column_order, column_row, column_offset, geometry):
    return x.new_empty(x.shape[0], indptr.shape[0] - 1, geometry[7], geometry[8])


@torch.library.custom_op("ddpm_lottery::sparse_conv2d_backward", mutates_args=())
def sparse_conv2d_backward(
    x: torch.Tensor,
    grad_out: torch.Tensor,
    values: torch.Tensor,
    indptr: torch.Tensor,
    plane: torch.Tensor,
    offset: torch.Tensor,
    column_indptr: torch.Tensor,
    column_order: torch.Tensor,
    column_row: torch.Tensor,
    column_offset: torch.Tensor,
    geometry: list[int],
    wanted: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x, grad_values, grad_bias); an operator's outputs are tensors, so one not wanted is empty."""
    index = index_arrays(indptr, plane, offset, column_indptr, column_order, column_row, column_offset)
    grads = conv_backward(x, grad_out, values, index, geometry, wanted)
    return tuple(g if g is not None else x.new_empty(0) for g in grads)


@sparse_conv2d_backward.register_fake
def _(
    x, grad_out, values, indptr, plane, offset, column_indptr, column_order, column_row, column_offset, geometry, wanted
):
    shapes = (x.shape, plane.shape, (grad_out.shape[1],))
    return tuple(x.new_empty(shape if want else (0,)) for shape, want in zip(shapes, wanted))


@torch.library.custom_op("ddpm_lottery::sparse_linear", mutates_args=())
def sparse_linear(
    x: torch.Tensor,
    values: torch.Tensor,
    bias: torch.Tensor,
    indptr: torch.Tensor,
    plane: torch.Tensor,
    offset: torch.Tensor,
    column_indptr: torch.Tensor,
    column_order: torch.Tensor,
    column_row: torch.Tensor,
    column_offset: torch.Tensor,
) -> torch.Tensor:
    """(rows, O) = the sparse ``Linear`` applied to x (rows, I).  The column_* arrays (CSC order) serve the
    backward pass only; ``offset`` is unused by a Linear (kept so that every operator takes one index)."""
    index = index_arrays(indptr, plane, offset, column_indptr, column_order, column_row, column_offset)
    return linear_forward(x, values, bias, index)


@sparse_linear.register_fake
def _(x, values, bias, indptr, plane, offset, column_indptr, column_order, column_row, column_offset):
    return x.new_empty(x.shape[0], indptr.shape[0] - 1)


@torch.library.custom_op("ddpm_lottery::sparse_linear_input_grad", mutates_args=())
def sparse_linear_input_grad(
    grad_out: torch.Tensor,
    values: torch.Tensor,
    column_indptr: torch.Tensor,
    column_order: torch.Tensor,
    column_row: torch.Tensor,
    in_features: int,
) -> torch.Tensor:
    index = {
        "column_indptr": _numpy(column_indptr),
        "column_order": _numpy(column_order),
        "column_row": _numpy(column_row),
    }
    return linear_input_grad(grad_out, values, index, in_features)


@sparse_linear_input_grad.register_fake
def _(grad_out, values, column_indptr, column_order, column_row, in_features):
    return grad_out.new_empty(grad_out.shape[0], in_features)


@torch.library.custom_op("ddpm_lottery::sparse_linear_weight_grad", mutates_args=())
def sparse_linear_weight_grad(
    x: torch.Tensor, grad_out: torch.Tensor, indptr: torch.Tensor, plane: torch.Tensor
) -> torch.Tensor:
    return linear_weight_grad(x, grad_out, {"indptr": _numpy(indptr), "plane": _numpy(plane)})


@sparse_linear_weight_grad.register_fake
def _(x, grad_out, indptr, plane):
    return x.new_empty(plane.shape[0])


# ----------------------------------------------------------------------------------------------
# Gradients, written once for both doors


def _conv_save(ctx, inputs) -> None:
    x, values, _bias, indptr, plane, offset, column_indptr, column_order, column_row, column_offset, geometry = inputs
    ctx.save_for_backward(x, values, indptr, plane, offset, column_indptr, column_order, column_row, column_offset)
    ctx.geometry = geometry


def _conv_grads(ctx, grad_out, index: dict | None):
    """The three gradients; ``index`` (numpy arrays) for the eager door, None for the operators."""
    x, values, *structure = ctx.saved_tensors
    wanted = [bool(w) for w in ctx.needs_input_grad[:3]]
    if index is not None:
        grads = conv_backward(x, grad_out, values, index, ctx.geometry, wanted)
    else:
        grads = sparse_conv2d_backward(x, grad_out, values, *structure, ctx.geometry, wanted)
    grad_x, grad_values, grad_bias = (g if want else None for g, want in zip(grads, wanted))
    return grad_x, grad_values, grad_bias, None, None, None, None, None, None, None, None


def _linear_save(ctx, inputs) -> None:
    x, values, _bias, indptr, plane, _offset, column_indptr, column_order, column_row, _column_offset = inputs
    ctx.save_for_backward(x, values, indptr, plane, column_indptr, column_order, column_row)


def _linear_grads(ctx, grad_out, index: dict | None):
    """The three gradients of the 2-D (rows, features) operation; ``index`` as for :func:`_conv_grads`."""
    x, values, indptr, plane, column_indptr, column_order, column_row = ctx.saved_tensors
    grads = grad_out.contiguous()
    grad_x = grad_values = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_x = (
            linear_input_grad(grads, values, index, x.shape[1])
            if index is not None
            else sparse_linear_input_grad(grads, values, column_indptr, column_order, column_row, x.shape[1])
        )
    if ctx.needs_input_grad[1]:
        grad_values = (
            linear_weight_grad(x, grads, index)
            if index is not None
            else sparse_linear_weight_grad(x, grads, indptr, plane)
        )
    if ctx.needs_input_grad[2]:
        grad_bias = grad_out.sum(0)
    return grad_x, grad_values, grad_bias, None, None, None, None, None, None, None


sparse_conv2d.register_autograd(
    lambda ctx, grad_out: _conv_grads(ctx, grad_out, None),
    setup_context=lambda ctx, inputs, output: _conv_save(ctx, inputs),
)
sparse_linear.register_autograd(
    lambda ctx, grad_out: _linear_grads(ctx, grad_out, None),
    setup_context=lambda ctx, inputs, output: _linear_save(ctx, inputs),
)


class _EagerConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, values, bias, structure, geometry):
        s = structure
        _conv_save(
            ctx,
            (
                x,
                values,
                bias,
                s.indptr,
                s.plane,
                s.offset,
                s.column_indptr,
                s.column_order,
                s.column_row,
                s.column_offset,
                geometry,
            ),
        )
        ctx.index = s.arrays
        return conv_forward(x, values, bias, s.arrays, geometry)

    @staticmethod
    def backward(ctx, grad_out):
        grad_x, grad_values, grad_bias = _conv_grads(ctx, grad_out, ctx.index)[:3]
        return grad_x, grad_values, grad_bias, None, None


class _EagerLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, values, bias, structure):
        _linear_save(ctx, (x, values, bias, *_operator_arguments(structure)))
        ctx.index = structure.arrays
        return linear_forward(x, values, bias, structure.arrays)

    @staticmethod
    def backward(ctx, grad_out):
        grad_x, grad_values, grad_bias = _linear_grads(ctx, grad_out, ctx.index)[:3]
        return grad_x, grad_values, grad_bias, None


def _operator_arguments(structure) -> tuple:
    s = structure
    return s.indptr, s.plane, s.offset, s.column_indptr, s.column_order, s.column_row, s.column_offset


def conv2d(x, values, bias, structure, geometry: list[int]) -> torch.Tensor:
    """The sparse convolution of a layer's surviving ``values``, by the door that fits the caller."""
    if torch.compiler.is_compiling():
        return sparse_conv2d(x, values, bias, *_operator_arguments(structure), geometry)
    if not torch.is_grad_enabled() or not (x.requires_grad or values.requires_grad or bias.requires_grad):
        return conv_forward(x, values, bias, structure.arrays, geometry)  # inference: no graph to record
    return _EagerConv.apply(x, values, bias, structure, geometry)


def linear(x, values, bias, structure) -> torch.Tensor:
    """The sparse ``Linear`` of x (rows, in_features), contiguous, by the door that fits the caller."""
    if torch.compiler.is_compiling():
        return sparse_linear(x, values, bias, *_operator_arguments(structure))
    if not torch.is_grad_enabled() or not (x.requires_grad or values.requires_grad or bias.requires_grad):
        return linear_forward(x, values, bias, structure.arrays)
    return _EagerLinear.apply(x, values, bias, structure)
