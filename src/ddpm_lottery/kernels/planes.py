"""How a layer's input becomes planes, and its surviving weights (plane, offset) pairs.

See :mod:`ddpm_lottery.kernels.jit` for the kernels these feed.  Three layouts cover every prunable
layer of a ``UNet2DModel``:

- **stride 1** (3x3 convolutions, 1x1 shortcuts, the up-sampler's convolution after its nearest
  interpolation): the zero-padded input channels, one plane each, flattened with row pitch
  ``W + 2p``; weight ``(o, c, kh, kw)`` reads plane ``c`` at offset ``kh * pitch + kw``.  A 1x1
  convolution without padding reads the input itself: no copy.
- **stride s** (the down-samplers): the padded input split into its ``s * s`` phases
  (``x[a::s, b::s]``), so the strided convolution becomes a stride-1 one over smaller planes:
  tap ``(kh, kw)`` reads phase ``(kh % s, kw % s)`` at offset ``(kh // s) * pitch + kw // s``.
- **Linear**: no layout of its own (its kernels, :mod:`ddpm_lottery.kernels.tiles`, transpose tiles of
  the token rows themselves); a weight ``(o, c)`` is plane ``c`` at offset 0.

Everything here is plain torch; only the kernels need the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Geometry:
    """The plane layout of one layer for one input size."""

    kind: str  # "conv" or "linear"
    planes: int  # planes per image
    plane_size: int  # floats per plane, including the tail the last reads run into
    pitch: int  # row pitch of the planes (and of the accumulator)
    out_rows: int
    out_cols: int
    stride: int = 1
    padding: tuple[int, int] = (0, 0)
    in_hw: tuple[int, int] = (0, 0)
    padded_hw: tuple[int, int] = (0, 0)  # the padded input, rounded up to a multiple of the stride

    def conv_arguments(self) -> list[int]:
        """What :func:`~ddpm_lottery.kernels.ops.sparse_conv2d` takes as its ``geometry``."""
        return [
            self.stride,
            self.padding[0],
            self.padding[1],
            self.pitch,
            self.padded_hw[0] // self.stride,
            self.plane_size,
            self.planes,
            self.out_rows,
            self.out_cols,
        ]

    @property
    def length(self) -> int:
        """Accumulator length: the output rows at the planes' pitch."""
        return self.out_rows * self.pitch


def conv_geometry(conv: torch.nn.Conv2d, height: int, width: int) -> Geometry:
    kh, kw = conv.kernel_size
    (stride, _), (ph, pw) = conv.stride, conv.padding  # equal strides: supported() refuses others
    rows_padded, cols_padded = height + 2 * ph, width + 2 * pw
    out_rows = (rows_padded - kh) // stride + 1
    out_cols = (cols_padded - kw) // stride + 1
    if stride == 1:
        pitch, phase_rows, phases = cols_padded, rows_padded, 1
    else:
        phase_rows, pitch, phases = -(-rows_padded // stride), -(-cols_padded // stride), stride * stride
        rows_padded, cols_padded = phase_rows * stride, pitch * stride
    # the last tap of the last output row reads (kw - 1) // stride floats past the plane: one spare row
    spare = pitch if kw > 1 else 0
    if kh == kw == 1 and ph == pw == 0 and stride == 1:
        spare = 0  # a plain 1x1 convolution reads the input as it is
    return Geometry(
        "conv",
        conv.in_channels * phases,
        phase_rows * pitch + spare,
        pitch,
        out_rows,
        out_cols,
        stride,
        (ph, pw),
        (height, width),
        (rows_padded, cols_padded),
    )


def linear_geometry(in_features: int, batch: int) -> Geometry:
    return Geometry("linear", in_features, batch, batch, 1, batch)


def supported(module: torch.nn.Module) -> str | None:
    """Why the sparse kernels cannot run this layer, or None when they can."""
    if isinstance(module, torch.nn.Linear):
        return None
    if not isinstance(module, torch.nn.Conv2d):
        return f"{type(module).__name__} layers"
    if module.groups != 1:
        return f"grouped convolutions (groups={module.groups})"
    if module.dilation != (1, 1):
        return f"dilated convolutions (dilation={module.dilation})"
    if module.stride[0] != module.stride[1]:
        return f"unequal strides {module.stride}"
    if module.padding_mode != "zeros" or isinstance(module.padding, str):
        return f"padding {module.padding!r} in mode {module.padding_mode!r}"
    return None


@dataclass
class Structure:
    """The surviving weights of one layer in the kernels' terms, for one geometry.

    CSR order (by output row) for the forward pass and the weight gradient; CSC order (by plane, then
    offset, so equal offsets run together) for the input gradient.
    """

    flat_index: torch.Tensor  # positions of the surviving weights in weight.reshape(-1), CSR order
    indptr: torch.Tensor
    plane: torch.Tensor
    offset: torch.Tensor
    column_indptr: torch.Tensor
    column_order: torch.Tensor  # CSC position -> CSR position
    column_row: torch.Tensor
    column_offset: torch.Tensor

    @property
    def nonzeros(self) -> int:
        return int(self.flat_index.numel())

    def __post_init__(self) -> None:
        # the kernels take numpy arrays: views made once, not at every call (each costs microseconds)
        self.arrays = {
            name: getattr(self, name).numpy()
            for name in ("indptr", "plane", "offset", "column_indptr", "column_order", "column_row", "column_offset")
        }


def structure(keep: torch.Tensor, geometry: Geometry) -> Structure:
    """The kernels' index arrays for a boolean mask of a Conv2d (O, C, kh, kw) or Linear (O, C) weight."""
    keep = keep.detach().to("cpu", torch.bool)
    rows = keep.shape[0]
    flat = keep.reshape(rows, -1)
    row, column = flat.nonzero(as_tuple=True)  # row-major: CSR order
    flat_index = row * flat.shape[1] + column
    if geometry.kind == "linear":
        plane, offset = column, torch.zeros_like(column)
    else:
        kh, kw = keep.shape[2:]
        channel, tap = column // (kh * kw), column % (kh * kw)
        tap_row, tap_col = tap // kw, tap % kw
        s = geometry.stride
        plane = channel * s * s + (tap_row % s) * s + (tap_col % s)
        offset = (tap_row // s) * geometry.pitch + tap_col // s
    indptr = torch.zeros(rows + 1, dtype=torch.int64)
    indptr[1:] = torch.bincount(row, minlength=rows).cumsum(0)
    order = torch.argsort(
        (plane * (offset.max().item() + 1 if offset.numel() else 1) + offset) * rows + row, stable=True
    )
    column_indptr = torch.zeros(geometry.planes + 1, dtype=torch.int64)
    column_indptr[1:] = torch.bincount(plane, minlength=geometry.planes).cumsum(0)
    return Structure(
        flat_index.contiguous(),
        indptr,
        plane.contiguous(),
        offset.contiguous(),
        column_indptr,
        order.contiguous(),
        row[order].contiguous(),
        offset[order].contiguous(),
    )
