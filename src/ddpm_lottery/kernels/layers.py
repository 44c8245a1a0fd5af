"""Layers that run a ticket's surviving weights only, and the swap that installs them.

:func:`use_kernels` replaces each ``Conv2d``/``Linear`` of a network by a :class:`SparseConv2d` or
:class:`SparseLinear` that *shares its parameters*: the same ``weight`` and ``bias`` objects under
the same names, so ``state_dict``, the optimizer, the EMA, checkpoints and exports see exactly the
network they saw before.  Each forward gathers the surviving values from ``weight`` (a few thousand
floats) and runs the sparse kernel; autograd carries their gradient back into ``weight`` at the
surviving positions, and zeros elsewhere, which is what a masked dense network's gradient is.

A layer decides per input signature (its input's shape) which kernel runs:

- ``sparse``: the sparse kernel wherever it can run (float32 on the CPU, outside autocast);
- ``dense``: PyTorch's own kernel;
- ``auto``: whichever a :class:`~ddpm_lottery.kernels.tuning.KernelTuner` measured faster on this
  machine for this shape, density and batch (timed once, cached on disk).

Where the sparse kernel cannot run (a CUDA tensor, half precision, a grouped convolution), the
layer runs dense, and the conversion's :class:`KernelReport` says which layers and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ddpm_lottery.kernels.planes import (
    Geometry,
    Structure,
    conv_geometry,
    linear_geometry,
    structure,
    supported,
)
from ddpm_lottery.utils.errors import UserError

KernelChoice = Literal["auto", "sparse", "dense"]
KERNEL_CHOICES: tuple[str, ...] = ("auto", "sparse", "dense")
_NUMPY_DTYPES = (torch.float32, torch.float64, torch.float16)  # the weights numpy reads without a copy


class _SparseMixin:
    """What the two sparse layer kinds share: the structure cache and the choice of kernel."""

    choice: str
    keep: torch.Tensor | None
    tuner: object | None
    layer_name: str
    plain_layer: torch.nn.Module  # the layer it replaced (same parameters), to switch back to

    def _setup(self, choice: str, keep: torch.Tensor | None, tuner, name: str) -> None:
        self.choice, self.keep, self.tuner, self.layer_name = choice, keep, tuner, name
        self._structures: dict[tuple, Structure] = {}
        self._decisions: dict[tuple, str] = {}
        self.last_kernel = "dense"
        self._pattern: torch.Tensor | None = None  # the surviving positions every structure is built from
        self._surviving: torch.Tensor | None = None  # the same, as flat positions
        self._surviving_numpy: np.ndarray | None = None
        self._zeros: torch.Tensor | None = None

    def _mask(self) -> torch.Tensor:
        return self.keep if self.keep is not None else self.weight.detach() != 0

    def _fixed_mask(self) -> torch.Tensor:
        """The mask the structures are built from, taken once (until :meth:`refresh`): the structures of
        every input size and the check of :meth:`check_weights` must describe the same positions."""
        if self._pattern is None:
            self._pattern = self._mask().clone()
        return self._pattern

    def _sparse_runnable(self, x: torch.Tensor) -> bool:
        return (
            x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
        )

    def _layout(self, x: torch.Tensor) -> tuple[Geometry, Structure]:
        geometry = self._geometry(x)
        # a convolution's (plane, offset) pairs depend on its input's width; a Linear's on nothing
        key = tuple(x.shape[-2:]) if geometry.kind == "conv" else ()
        if key not in self._structures:
            self._structures[key] = _build_structure(self._fixed_mask(), geometry)
        return geometry, self._structures[key]

    def _kernel_for(self, x: torch.Tensor) -> str:
        if self.choice == "dense" or not self._sparse_runnable(x):
            return "dense"
        if self.choice == "sparse":
            return "sparse"
        signature = tuple(x.shape)
        if signature not in self._decisions:
            self._decisions[signature] = self.tuner.choose(self, x) if self.tuner is not None else "dense"
        return self._decisions[signature]

    def _sparse(self, x: torch.Tensor) -> torch.Tensor:
        # deferred: numba loads with the first sparse layer (use_kernels loads it before any layer is swapped)
        from ddpm_lottery.kernels import ops

        geometry, s = self._layout(x)
        values, bias = self._values(s, x)
        if geometry.kind == "conv":
            return ops.conv2d(x.contiguous(), values, bias, s, geometry.conv_arguments())
        rows = x.reshape(-1, x.shape[-1]).contiguous()  # (B, T, D) tokens: B * T rows
        return ops.linear(rows, values, bias, s).reshape(*x.shape[:-1], self.weight.shape[0])

    def _values(self, s: Structure, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The surviving weights (CSR order) and the bias, gathered from ``weight`` at every call.

        Never a copy kept between calls: a write through ``.data`` (diffusers' ``EMAModel.copy_to``, say)
        moves no version counter, so a cached copy could not know it is stale.  The gather costs a few
        thousand floats, against the layer's millions of multiply-adds."""
        bias = self.bias if self.bias is not None else self._zero_bias(x)
        return self.weight.reshape(-1)[s.flat_index], bias

    def _zero_bias(self, x: torch.Tensor) -> torch.Tensor:
        if self._zeros is None or self._zeros.device != x.device:
            self._zeros = x.new_zeros(self.weight.shape[0])
        return self._zeros

    def forward_with(self, x: torch.Tensor, kernel: str) -> torch.Tensor:
        """The layer's output by the named kernel (the tuner times both through this)."""
        return self._sparse(x) if kernel == "sparse" else self._dense(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.choice != "dense" and not torch.compiler.is_compiling():
            # compiled calls are checked before their graph runs (kernels.install); an eager call skips
            # torch.compiler.disable's wrapper, which costs 4x the check itself (about 23 us a call)
            self._check_structure()
        self.last_kernel = self._kernel_for(x)
        return self.forward_with(x, self.last_kernel)

    @torch.compiler.disable
    def check_weights(self) -> bool:
        """:meth:`_check_structure`, outside any graph torch.compile traces."""
        return self._check_structure()

    def _check_structure(self) -> bool:
        """Make sure the kernel's structure still holds every nonzero weight; True if it was rebuilt.

        The values are read at every call (:meth:`_values`), but the *positions* are fixed when the
        structure is built.  A write that gives a pruned position a value (``load_state_dict`` of a denser
        level, ``p.data.copy_``) would be skipped silently; so every call counts the nonzero weights
        outside the structure (one pass over the weight, a small fraction of the layer's work).  A layer
        whose survivors are its nonzero weights rebuilds its structure from the new ones; a layer whose
        survivors are a ticket's mask (training) refuses, because its mask is what the run declares."""
        # numpy, not torch: the same count for a few microseconds less dispatch a call, which over a training
        # step's 64 layers is about 2 % of a sparse step of `tiny` (measured: benchmarks/ticket_step.py --split)
        weight = self.weight.detach()
        if weight.device.type == "cpu" and weight.dtype in _NUMPY_DTYPES:
            flat = weight.numpy().reshape(-1)
            outside = int(np.count_nonzero(flat)) - int(np.count_nonzero(flat[self._surviving_array()]))
        else:
            outside = int(torch.count_nonzero(weight)) - int(
                torch.count_nonzero(weight.reshape(-1)[self._surviving_index()])
            )
        if outside == 0:
            return False
        if self.keep is None:
            self.refresh()
            return True
        raise UserError(
            f"layer {self.layer_name}: {outside} weights outside the ticket's mask are nonzero (written after the "
            "sparse kernels were installed); load weights that fit the mask, or install the kernels again"
        )

    def _surviving_index(self) -> torch.Tensor:
        if self._surviving is None:
            self._surviving = self._fixed_mask().reshape(-1).nonzero().squeeze(1)
        return self._surviving

    def _surviving_array(self) -> np.ndarray:
        """:meth:`_surviving_index` as a numpy array (the check's index)."""
        if self._surviving_numpy is None:
            self._surviving_numpy = self._surviving_index().cpu().numpy()
        return self._surviving_numpy

    def signature_keys(self) -> list[str]:
        """What the tuner decided this layer by (for the network-level check's key)."""
        return [f"{self.layer_name} {signature} {kernel}" for signature, kernel in sorted(self._decisions.items())]

    def density(self) -> float:
        return float(self._mask().float().mean())

    def refresh(self, keep: torch.Tensor | None = None) -> None:
        """Forget the structures (the mask changed: a new level); ``keep`` replaces the mask if given."""
        if keep is not None:
            self.keep = keep
        self._structures.clear()
        self._decisions.clear()
        self._pattern = None
        self._surviving = None
        self._surviving_numpy = None


@torch.compiler.disable
def _build_structure(keep: torch.Tensor, geometry: Geometry) -> Structure:
    # data-dependent index building, once per layer and input size: torch.compile leaves it to eager mode
    return structure(keep, geometry)


class SparseConv2d(_SparseMixin, torch.nn.Conv2d):
    def _geometry(self, x: torch.Tensor) -> Geometry:
        return conv_geometry(self, x.shape[-2], x.shape[-1])

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.Conv2d.forward(self, x)


class SparseLinear(_SparseMixin, torch.nn.Linear):
    def _geometry(self, x: torch.Tensor) -> Geometry:
        return linear_geometry(self.in_features, x.numel() // x.shape[-1])

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def _swap(module: torch.nn.Module, cls: type) -> torch.nn.Module:
    """A ``cls`` instance holding the very same parameters, buffers and hooks as ``module``."""
    swapped = cls.__new__(cls)
    swapped.__dict__.update(
        {key: (value.copy() if isinstance(value, dict) else value) for key, value in module.__dict__.items()}
    )
    return swapped


@dataclass
class KernelReport:
    """What :func:`use_kernels` installed: the sparse layers, and the layers left dense with the reason."""

    choice: str
    sparse_layers: list[str] = field(default_factory=list)
    dense_layers: dict[str, str] = field(default_factory=dict)  # name -> why
    unavailable: str | None = None  # why no sparse kernel can run at all (no numba, a CUDA device)
    setup_seconds: float = 0.0  # the swap, and the JIT's compilation (or loading from its disk cache)
    tuner: object | None = None
    swaps: list = field(default_factory=list)  # (parent, attribute, plain layer, sparse layer), to switch back
    plain: bool = False  # the plain layers are in place (run_plain(True))
    compiled: bool = False  # calls after each input shape's first go through torch.compile
    compile_seconds: float = 0.0  # the first compiled call of each shape and layer set, which pays the compile

    def run_plain(self, plain: bool) -> None:
        """Put the plain layers back (``True``: the very network it was, no overhead) or the sparse ones."""
        self.plain = plain
        for parent, attribute, original, swapped in self.swaps:
            setattr(parent, attribute, original if plain else swapped)

    def summary(self) -> str:
        """One line for logs and records: which kernel the layers run."""
        if self.choice == "dense":
            return "kernels: dense (PyTorch's)"
        if self.unavailable:
            return f"kernels: dense, because {self.unavailable}"
        text = f"kernels: {self.choice}, {len(self.sparse_layers)} layers with the sparse kernel"
        if self.dense_layers:
            reasons = sorted(set(self.dense_layers.values()))
            text += f", {len(self.dense_layers)} dense ({'; '.join(reasons)} not supported)"
        return text


def jit_unavailable(training: bool = False) -> str | None:
    """Why the JIT kernels cannot load here (numba missing or broken), or None."""
    try:
        # deferred: numba loads only when the kernels are asked for; importing ops registers the operators
        from ddpm_lottery.kernels import conv_grads, jit, ops, tiles

        ops.match_threads()  # starts numba's pool without changing torch's thread count
        jit.warm_up()  # compiles on a machine's first use, then loads from numba's disk cache
        if training:
            conv_grads.warm_up()
        tiles.warm_up(training)
    except Exception as exc:  # a broken numba/llvmlite install raises more than ImportError
        return f"the sparse kernels' JIT (numba) could not load: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    return None


def sparse_layers(model: torch.nn.Module) -> list[tuple[str, _SparseMixin]]:
    return [(name, module) for name, module in model.named_modules() if isinstance(module, _SparseMixin)]


def use_kernels(
    model: torch.nn.Module,
    choice: KernelChoice,
    *,
    masks: dict[str, torch.Tensor] | None = None,
    tuner=None,
    device: torch.device | str | None = None,
    training: bool = False,
) -> KernelReport:
    """Install the sparse layers in ``model`` (in place) and say what was installed.

    ``masks`` (weight name -> boolean keep mask) fixes each layer's surviving weights, as training needs
    (a surviving weight may pass through zero); without them, the nonzero weights survive, which is exact
    for inference.  Only layers whose weight has a mask, or some zero, are converted.
    """
    if choice not in KERNEL_CHOICES:
        raise ValueError(f"kernels must be one of {KERNEL_CHOICES}, not {choice!r}")
    report = KernelReport(choice)
    installed = sparse_layers(model)
    if choice == "dense":
        for _, layer in installed:  # a network converted before runs PyTorch's kernels from now on
            layer.choice = "dense"
        return report
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if device.type != "cpu":
        report.unavailable = f"the sparse kernels run on the CPU only (this is {device.type})"
        return report
    report.unavailable = jit_unavailable(training)
    if report.unavailable:
        return report
    names = {id(module): name for name, module in model.named_modules()}
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if not isinstance(child, (torch.nn.Conv2d, torch.nn.Linear)):
                continue
            name = names[id(child)]
            keep = masks.get(f"{name}.weight") if masks is not None else None
            if isinstance(child, _SparseMixin):  # converted before, maybe to another choice: switch it
                child.choice, child.tuner = choice, tuner
                child.refresh(None if keep is None else keep.to(torch.bool))
                report.sparse_layers.append(name)
                report.swaps.append((parent, child_name, child.plain_layer, child))
                continue
            if masks is not None and keep is None:
                continue  # not a prunable tensor of this ticket
            if keep is None and bool((child.weight != 0).all()):
                continue  # a dense layer: nothing to skip
            why = supported(child)
            if why is not None:
                report.dense_layers[name] = why
                continue
            swapped = _swap(child, SparseConv2d if isinstance(child, torch.nn.Conv2d) else SparseLinear)
            swapped._setup(choice, None if keep is None else keep.to(torch.bool), tuner, name)
            object.__setattr__(swapped, "plain_layer", child)  # not a submodule: its parameters are the same
            setattr(parent, child_name, swapped)
            report.sparse_layers.append(name)
            report.swaps.append((parent, child_name, child, swapped))
    return report


def kernels_used(model: torch.nn.Module) -> dict[str, int]:
    """How many layers ran each kernel in the last forward pass."""
    counts: dict[str, int] = {}
    for _, layer in sparse_layers(model):
        counts[layer.last_kernel] = counts.get(layer.last_kernel, 0) + 1
    return counts
