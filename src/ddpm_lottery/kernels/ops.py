"""The kernels as PyTorch operators: ``ddpm_lottery::sparse_gather`` with its gradient.

Registered with ``torch.library.custom_op``, so autograd differentiates through it (the input
gradient by the transposed kernel, :func:`~ddpm_lottery.kernels.jit.scatter`; the weight gradient
at the surviving positions only, :func:`~ddpm_lottery.kernels.jit.dots`) and ``torch.compile``
traces the network around it as one opaque call instead of breaking its graph.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from . import jit


def _numpy(tensor: torch.Tensor):
    return tensor.detach().contiguous().numpy()


def _threads() -> int:
    """Give numba's pool the threads torch was given (--threads, OMP_NUM_THREADS); how many that is."""
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)
    return threads


@torch.library.custom_op("ddpm_lottery::sparse_gather", mutates_args=())
def sparse_gather(planes: torch.Tensor, values: torch.Tensor, bias: torch.Tensor, indptr: torch.Tensor,
                  plane: torch.Tensor, offset: torch.Tensor, column_indptr: torch.Tensor,
                  column_order: torch.Tensor, column_row: torch.Tensor, column_offset: torch.Tensor,
                  shape: list[int]) -> torch.Tensor:
    """(N, O, out_rows * out_cols) = the sparse layer applied to (N, P, S) planes; ``shape`` = [length, pitch,
    out_rows, out_cols].  The column_* arrays (CSC order) serve the backward pass only."""
    length, pitch, out_rows, out_cols = shape
    out = torch.empty(planes.shape[0], indptr.numel() - 1, out_rows * out_cols, dtype=torch.float32)
    _threads()
    jit.gather(_numpy(planes), _numpy(indptr), _numpy(plane), _numpy(offset), _numpy(values), _numpy(bias),
               length, pitch, out_rows, out_cols, out.numpy())
    return out


@sparse_gather.register_fake
def _(planes, values, bias, indptr, plane, offset, column_indptr, column_order, column_row, column_offset, shape):
    return planes.new_empty(planes.shape[0], indptr.shape[0] - 1, shape[2] * shape[3])


@torch.library.custom_op("ddpm_lottery::sparse_scatter", mutates_args=())
def sparse_scatter(grads: torch.Tensor, values: torch.Tensor, column_indptr: torch.Tensor,
                   column_order: torch.Tensor, column_row: torch.Tensor, column_offset: torch.Tensor,
                   plane_size: int) -> torch.Tensor:
    """The planes' gradient: the transposed sparse kernel applied to the (N, O, length) output gradient."""
    out = torch.empty(grads.shape[0], column_indptr.numel() - 1, plane_size, dtype=torch.float32)
    _threads()
    jit.scatter(_numpy(grads), _numpy(column_indptr), _numpy(column_row), _numpy(column_offset),
                _numpy(values[column_order]), plane_size, out.numpy())
    return out


@sparse_scatter.register_fake
def _(grads, values, column_indptr, column_order, column_row, column_offset, plane_size):
    return grads.new_empty(grads.shape[0], column_indptr.shape[0] - 1, plane_size)


@torch.library.custom_op("ddpm_lottery::sparse_dots", mutates_args=())
def sparse_dots(planes: torch.Tensor, grads: torch.Tensor, indptr: torch.Tensor, plane: torch.Tensor,
                offset: torch.Tensor) -> torch.Tensor:
    """The gradient of the surviving weights (CSR order), and of no other."""
    out = torch.empty(plane.numel(), dtype=torch.float32)
    _threads()
    jit.dots(_numpy(planes), _numpy(grads), _numpy(indptr), _numpy(plane), _numpy(offset), out.numpy())
    return out


@sparse_dots.register_fake
def _(planes, grads, indptr, plane, offset):
    return planes.new_empty(plane.shape[0])


@torch.library.custom_op("ddpm_lottery::sparse_conv2d", mutates_args=())
def sparse_conv2d(x: torch.Tensor, values: torch.Tensor, bias: torch.Tensor, indptr: torch.Tensor,
                  plane: torch.Tensor, offset: torch.Tensor, column_indptr: torch.Tensor, column_order: torch.Tensor,
                  column_row: torch.Tensor, column_offset: torch.Tensor, geometry: list[int]) -> torch.Tensor:
    """The sparse convolution of x (N, C, H, W), padding fused; ``geometry`` =
    [stride, pad_rows, pad_cols, pitch, phase_rows, plane_size, planes_per_image, out_rows, out_cols]."""
    stride, pad_rows, pad_cols, pitch, phase_rows, plane_size, planes_per_image, out_rows, out_cols = geometry
    out = torch.empty(x.shape[0], indptr.numel() - 1, out_rows, out_cols, dtype=torch.float32)
    threads = _threads()
    jit.conv_forward(_numpy(x), stride, pad_rows, pad_cols, pitch, phase_rows, plane_size, planes_per_image,
                     _numpy(indptr), _numpy(plane), _numpy(offset), _numpy(values), _numpy(bias), out_rows, out_cols,
                     threads, out.numpy().reshape(out.shape[0], out.shape[1], -1))
    return out


@sparse_conv2d.register_fake
def _(x, values, bias, indptr, plane, offset, column_indptr, column_order, column_row, column_offset, geometry):
    return x.new_empty(x.shape[0], indptr.shape[0] - 1, geometry[7], geometry[8])


def _conv_setup_context(ctx, inputs, output):
    x, values, bias, indptr, plane, offset, column_indptr, column_order, column_row, column_offset, geometry = inputs
    ctx.save_for_backward(x, values, indptr, plane, offset, column_indptr, column_order, column_row, column_offset)
    ctx.geometry = geometry


def _conv_backward(ctx, grad_out):
    x, values, indptr, plane, offset, column_indptr, column_order, column_row, column_offset = ctx.saved_tensors
    stride, pad_rows, pad_cols, pitch, phase_rows, plane_size, planes_per_image, out_rows, out_cols = ctx.geometry
    batch, rows = grad_out.shape[:2]
    grads = grad_out.contiguous()
    if pitch != out_cols:  # the accumulator's layout: zeros in the junk columns
        grads = torch.nn.functional.pad(grads, (0, pitch - out_cols))
    grads = grads.reshape(batch, rows, out_rows * pitch)
    _threads()
    grad_x = grad_values = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_x = torch.empty(x.shape, dtype=torch.float32)
        jit.conv_input_grad(grads.numpy(), _numpy(column_indptr), _numpy(column_row), _numpy(column_offset),
                            _numpy(values[column_order]), stride, pad_rows, pad_cols, pitch, plane_size,
                            grad_x.numpy())
    if ctx.needs_input_grad[1]:
        planes = np.empty((batch, planes_per_image, plane_size), np.float32)
        jit.fill_all(_numpy(x), stride, pad_rows, pad_cols, pitch, phase_rows, planes)
        grad_values = torch.empty(plane.numel(), dtype=torch.float32)
        jit.dots(planes, grads.numpy(), _numpy(indptr), _numpy(plane), _numpy(offset), grad_values.numpy())
    if ctx.needs_input_grad[2]:
        grad_bias = grad_out.sum((0, 2, 3))
    return grad_x, grad_values, grad_bias, None, None, None, None, None, None, None, None


sparse_conv2d.register_autograd(_conv_backward, setup_context=_conv_setup_context)


def _setup_context(ctx, inputs, output):
    planes, values, bias, indptr, plane, offset, column_indptr, column_order, column_row, column_offset, shape = inputs
    ctx.save_for_backward(planes, values, indptr, plane, offset, column_indptr, column_order, column_row,
                          column_offset)
    ctx.shape = shape


def _backward(ctx, grad_out):
    planes, values, indptr, plane, offset, column_indptr, column_order, column_row, column_offset = ctx.saved_tensors
    length, pitch, out_rows, out_cols = ctx.shape
    grads = grad_out.contiguous()
    if pitch != out_cols:  # back to the accumulator's layout: zeros in the junk columns
        grads = torch.nn.functional.pad(grads.reshape(grads.shape[0], grads.shape[1], out_rows, out_cols),
                                        (0, pitch - out_cols)).reshape(grads.shape[0], grads.shape[1], length)
    grad_planes = grad_values = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_planes = sparse_scatter(grads, values, column_indptr, column_order, column_row, column_offset,
                                     planes.shape[2])
    if ctx.needs_input_grad[1]:
        grad_values = sparse_dots(planes, grads, indptr, plane, offset)
    if ctx.needs_input_grad[2]:
        grad_bias = grad_out.sum((0, 2))
    return grad_planes, grad_values, grad_bias, None, None, None, None, None, None, None, None


sparse_gather.register_autograd(_backward, setup_context=_setup_context)
