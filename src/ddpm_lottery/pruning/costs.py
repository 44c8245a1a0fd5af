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

from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ddpm_lottery.utils.errors import UserError
from ddpm_lottery.pruning.masks import Masks, ModuleMap
from ddpm_lottery.utils.files import load_tensors, save_tensors


def layer_flops(model: torch.nn.Module) -> tuple[int, dict[str, int]]:
    """(total FLOPs, {layer name: FLOPs}) of one forward pass on one image."""
    config = model.config
    size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
    device = next(model.parameters()).device
    x = torch.zeros(1, config.in_channels, size, size, device=device)
    t = torch.zeros(1, dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    # The math SDPA path runs the attention products as bmm, which the counter sees; the fused CPU/GPU
    # kernels are not counted by FlopCounterMode.
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, t)
    model.train(was_training)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    per_layer = {}
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
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
        modules.append({"index": module.index, "name": module.name, "dense_flops": dense,
                        "effective_flops": effective, "reduction": 1 - effective / dense if dense else 0.0})
    prunable_layers = sum(per_layer[t.rsplit(".weight", 1)[0]] for t in mmap.tensor_names)
    effective_total = total - saved
    return {"dense_flops": total, "effective_flops": effective_total, "reduction": saved / total,
            "dense_macs": total / 2, "effective_macs": effective_total / 2,
            "prunable_layer_flops": prunable_layers, "untouchable_flops": total - prunable_layers,
            "per_module": modules, "counter": "torch.utils.flop_counter.FlopCounterMode, 1 image, 2 FLOPs per MAC, attention via the math "
                       "SDPA path"}


def time_denoisers(networks: dict[str, torch.nn.Module], batch: int, repeats: int = 5,
                   device: torch.device | str = "cpu") -> dict[str, float]:
    """Median seconds of one denoiser call at ``batch`` images, per network.

    The networks are timed interleaved (one call of each in turn, ``repeats`` rounds, after two
    warm-up rounds: with ``--compile-sampling`` the first call at a shape runs eagerly and the second
    compiles), so a machine that slows down mid-measurement slows every network alike and the
    ratios between them stay fair.  Timesteps cycle through the range; no gradients.
    """
    import statistics
    import time

    inputs = {}
    for name, net in networks.items():
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
                net(x, t)
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


def export_sparse(weights: dict[str, torch.Tensor], masks: Masks, path: str | Path) -> int:
    """Write mask bits + surviving values (+ dense other tensors); returns the file's size in bytes."""
    tensors: dict[str, torch.Tensor] = {}
    metadata = {"format": "ddpm-lottery sparse export v1: mask.<name> = numpy.packbits of the flattened mask, "
                          "values.<name> = surviving values in row-major order, dense.<name> = other tensors"}
    for name, value in weights.items():
        if name in masks:
            mask = masks[name].reshape(-1)
            tensors[f"mask.{name}"] = torch.from_numpy(np.packbits(mask.numpy().astype(np.uint8)))
            tensors[f"values.{name}"] = value.reshape(-1)[mask].contiguous()
            metadata[f"shape:{name}"] = ",".join(map(str, value.shape))
        else:
            tensors[f"dense.{name}"] = value
    save_tensors(path, tensors, metadata)
    return Path(path).stat().st_size


def load_sparse(path: str | Path) -> dict[str, torch.Tensor]:
    """Rebuild the dense state dict from a sparse export."""
    from safetensors import safe_open

    tensors = load_tensors(path, "sparse export")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    state = {k[len("dense."):]: v for k, v in tensors.items() if k.startswith("dense.")}
    for key, values in tensors.items():
        if not key.startswith("values."):
            continue
        name = key[len("values."):]
        if f"shape:{name}" not in metadata or f"mask.{name}" not in tensors:
            raise UserError(f"sparse export {path} lacks the shape or mask of {name}; re-export it")
        shape = [int(s) for s in metadata[f"shape:{name}"].split(",")]
        count = int(np.prod(shape))
        mask = torch.from_numpy(np.unpackbits(tensors[f"mask.{name}"].numpy())[:count].astype(bool))
        if int(mask.sum()) != values.numel():
            raise UserError(f"sparse export {path} is inconsistent for {name}; re-export it")
        dense = torch.zeros(count, dtype=values.dtype)
        dense[mask] = values
        state[name] = dense.view(shape)
    return state


def parameter_counts(weights: dict[str, torch.Tensor], masks: Masks) -> dict:
    total = sum(v.numel() for v in weights.values())
    pruned = sum(int((~m).sum()) for m in masks.values())
    return {"dense_parameters": total, "surviving_parameters": total - pruned,
            "prunable_parameters": sum(m.numel() for m in masks.values())}


def level_costs(level, sampling_steps: dict[str, int] | None = None, weights: str = "ema") -> dict:
    """FLOPs, parameters and storage of one level; stores them beside it (costs.json, sparse.safetensors).

    The sparse export holds the weights sampling and FID use (EMA by default).
    """
    from ddpm_lottery.utils.files import write_json

    model = level.network(weights)
    state = level.state(weights)
    masks = level.masks()
    mmap = _map_for_masks(model, masks)
    flops = ticket_flops(model, masks, mmap)
    dense_bytes = level.weights_path(weights).stat().st_size
    sparse_bytes = export_sparse(state, masks, level.sparse_path)
    steps = sampling_steps or {"ddpm": 1000, "ddim": 50, "dpm-solver++": 20}
    result = {
        "level": level.index, "weights": weights, **flops, **parameter_counts(state, masks),
        "per_sample_flops": {f"{name} {k} steps": {"dense": sampler_flops(flops["dense_flops"], k),
                                                   "effective": sampler_flops(flops["effective_flops"], k)}
                             for name, k in steps.items()},
        "dense_bytes": dense_bytes, "sparse_bytes": sparse_bytes, "storage_ratio": sparse_bytes / dense_bytes,
    }
    if level.compact_path.exists():
        # a channel ticket also runs as a smaller network: these FLOPs are executed, not theoretical
        small = level.compact_network()
        executed, _ = layer_flops(small)
        result["compact"] = {"flops": executed, "macs": executed / 2,
                             "parameters": sum(p.numel() for p in small.parameters()),
                             "bytes": level.compact_path.stat().st_size, "flop_ratio": flops["dense_flops"] / executed}
    write_json(level.costs_path, result)
    return result


def stored_costs(level) -> dict:
    """The level's costs, computed once and read back afterwards."""
    return level.costs() or level_costs(level)


def _map_for_masks(model, masks: Masks) -> ModuleMap:
    """The block map restricted to the masked tensors (include/exclude patterns of the run)."""
    from ddpm_lottery.pruning.masks import ModuleMap, PruneModule, module_map

    full = module_map(model)
    modules = []
    for m in full.modules:
        tensors = [t for t in m.tensors if t in masks]
        if tensors:
            sizes = [masks[t].numel() for t in tensors]
            modules.append(PruneModule(len(modules), m.name, tensors, sizes))
    return ModuleMap(full.granularity, modules, {t: list(masks[t].shape) for t in masks})
