"""What a ticket costs: FLOPs per denoiser call and per sample, parameters, storage.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one forward pass of one
image (1 MAC = 2 FLOPs).  What the counter counts: the
multiply-adds of every Conv2d and Linear, and the attention products (``q @ k^T`` and
``attn @ v``, run through the math SDPA path so that they show up as matrix products).  It counts
GroupNorm, activations, softmax, additions and up/downsampling as zero FLOPs, so neither the dense
nor the ticket figure includes them.  A ticket's *effective* FLOPs scale every Conv2d/Linear by the
density of its weight (the multiply-adds a sparse kernel would do) and keep the attention products
as they are.  These are theoretical: PyTorch's dense kernels do not get faster from zeros.

Storage compares the dense weights (float32 safetensors) with a sparse export: a bit-packed
mask plus the surviving values of each pruned tensor, and the other tensors dense.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ddpm_lottery.models.families import denoise, family_of
from ddpm_lottery.pruning.masks import Masks
from ddpm_lottery.pruning.modules import ModuleMap, PruneModule, module_map


def layer_flops(model: torch.nn.Module) -> tuple[int, dict[str, int]]:
    """(total FLOPs, {layer name: FLOPs}) of one forward pass on one image."""
    x, t = family_of(model).example_input(model)
    was_training = model.training
    model.eval()
    # The math SDPA path runs the attention products as bmm, which the counter sees; the fused CPU/GPU
    # kernels are not counted by FlopCounterMode.

    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        denoise(model, x, t)
    model.train(was_training)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    per_layer = {}
    for name, module in model.named_modules():
        if family_of(model).is_prunable(module):
            per_layer[name] = int(sum(counts.get(f"{root}.{name}", {}).values()))
    return int(counter.get_total_flops()), per_layer


def ticket_flops(model: torch.nn.Module, masks: Masks, mmap: ModuleMap) -> dict:
    """Dense and effective FLOPs per denoiser call, in total and per module of the map."""
    total, per_layer = layer_flops(model)
    density = {name: float(mask.float().mean()) for name, mask in masks.items()}
    saved = 0.0
    modules = []
    for module in mmap.modules:
        dense = sum(per_layer[t.rsplit(".weight", 1)[0]] for t in module.tensors)
        effective = sum(per_layer[t.rsplit(".weight", 1)[0]] * density.get(t, 1.0) for t in module.tensors)
        saved += dense - effective
        modules.append(
            {
                "index": module.index,
                "name": module.name,
                "dense_flops": dense,
                "effective_flops": effective,
                "reduction": 1 - effective / dense if dense else 0.0,
            }
        )
    prunable_layers = sum(per_layer[t.rsplit(".weight", 1)[0]] for t in mmap.tensor_names)
    effective_total = total - saved
    return {
        "dense_flops": total,
        "effective_flops": effective_total,
        "reduction": saved / total,
        "dense_macs": total / 2,
        "effective_macs": effective_total / 2,
        "prunable_layer_flops": prunable_layers,
        "untouchable_flops": total - prunable_layers,
        "per_module": modules,
        "counter": "torch.utils.flop_counter.FlopCounterMode, 1 image, 2 FLOPs per MAC, attention via the math "
        "SDPA path",
    }


def time_denoisers(
    networks: dict[str, torch.nn.Module], batch: int, repeats: int = 5, device: torch.device | str = "cpu"
) -> dict[str, float]:
    """Median seconds of one denoiser call at ``batch`` images, per network.

    The networks are timed interleaved (one call of each in turn, ``repeats`` rounds, after two
    warm-up rounds: with ``--compile-sampling`` the first call at a shape runs eagerly and the second
    compiles), so a machine that slows down mid-measurement slows every network alike and the
    ratios between them stay fair.  Timesteps cycle through the range; no gradients.
    """
    inputs = {}
    for net in networks.values():
        net.eval().to(device)
        config = net.config
        size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
        key = (config.in_channels, size)
        if key not in inputs:
            generator = torch.Generator().manual_seed(0)
            inputs[key] = torch.randn(batch, config.in_channels, size, size, generator=generator).to(device)
    times: dict[str, list[float]] = {name: [] for name in networks}
    with torch.no_grad():
        for round_index in range(repeats + 2):
            t = torch.full((batch,), 999 - (round_index * 337) % 1000, dtype=torch.long, device=device)
            for name, net in networks.items():
                config = net.config
                size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
                x = inputs[(config.in_channels, size)]
                started = time.perf_counter()
                denoise(net, x, t)
                if x.is_cuda:
                    torch.cuda.synchronize(x.device)
                if round_index >= 2:  # caches, allocators and any compile are warm
                    times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def sampler_flops(per_call: float, steps: int) -> float:
    """FLOPs of one sample: one denoiser call per sampling step (DDPM, DDIM and DPM-Solver++ alike)."""
    return per_call * steps


# ----------------------------------------------------------------------------------------------
# Storage


def parameter_counts(weights: dict[str, torch.Tensor], masks: Masks) -> dict:
    total = sum(v.numel() for v in weights.values())
    pruned = sum(int((~m).sum()) for m in masks.values())
    return {
        "dense_parameters": total,
        "surviving_parameters": total - pruned,
        "prunable_parameters": sum(m.numel() for m in masks.values()),
    }


def masked_module_map(model, masks: Masks) -> ModuleMap:
    """The block map restricted to the masked tensors (include/exclude patterns of the run)."""
    full = module_map(model)
    modules = []
    for m in full.modules:
        tensors = [t for t in m.tensors if t in masks]
        if tensors:
            sizes = [masks[t].numel() for t in tensors]
            modules.append(PruneModule(len(modules), m.name, tensors, sizes))
    return ModuleMap(full.granularity, modules, {t: list(masks[t].shape) for t in masks})
