"""What a finished level costs: its FLOPs, parameters and storage, computed once and stored beside it.

The counting itself (FLOPs of a masked network, parameter counts) is :mod:`ddpm_lottery.pruning.costs`;
this module applies it to a level's network and writes ``costs.json`` and the sparse export.  Both are
written only where they are missing: what is stored is read (so ``flops`` works on a read-only run, and
on a committed level that keeps only its sparse export).
"""

from __future__ import annotations

from ddpm_lottery.lottery.networks import level_compact_network, level_masks, level_network
from ddpm_lottery.pruning.costs import layer_flops, masked_module_map, parameter_counts, sampler_flops, ticket_flops
from ddpm_lottery.runs.sparse_export import export_sparse
from ddpm_lottery.utils.files import write_json


def level_costs(level, sampling_steps: dict[str, int] | None = None, weights: str = "ema") -> dict:
    """FLOPs, parameters and storage of one level; stores them beside it (costs.json, and sparse.safetensors
    unless it is there).

    The sparse export holds the weights sampling and FID use (EMA by default).
    """
    model = level_network(level, weights)
    state = level.state(weights)
    masks = level_masks(level, model)
    mmap = masked_module_map(model, masks)
    flops = ticket_flops(model, masks, mmap)
    dense_path = level.weights_path(weights)
    # a level kept as its sparse export alone: the dense file's size is its tensors' bytes
    dense_bytes = (
        dense_path.stat().st_size if dense_path.exists() else sum(t.numel() * t.element_size() for t in state.values())
    )
    if level.sparse_path.exists() and weights == "ema":
        sparse_bytes = level.sparse_path.stat().st_size  # the export of these very weights (sealed in place)
    else:
        sparse_bytes = export_sparse(state, masks, level.sparse_path)
    steps = sampling_steps or {"ddpm": 1000, "ddim": 50, "dpm-solver++": 20}
    result = {
        "level": level.index,
        "weights": weights,
        **flops,
        **parameter_counts(state, masks),
        "per_sample_flops": {
            f"{name} {k} steps": {
                "dense": sampler_flops(flops["dense_flops"], k),
                "effective": sampler_flops(flops["effective_flops"], k),
            }
            for name, k in steps.items()
        },
        "dense_bytes": dense_bytes,
        "sparse_bytes": sparse_bytes,
        "storage_ratio": sparse_bytes / dense_bytes,
    }
    if level.compact_path.exists():
        # a channel ticket also runs as a smaller network: these FLOPs are executed, not theoretical
        small = level_compact_network(level)
        executed, _ = layer_flops(small)
        result["compact"] = {
            "flops": executed,
            "macs": executed / 2,
            "parameters": sum(p.numel() for p in small.parameters()),
            "bytes": level.compact_path.stat().st_size,
            "flop_ratio": flops["dense_flops"] / executed,
        }
    write_json(level.costs_path, result)
    return result


def stored_costs(level) -> dict:
    """The level's costs, computed once and read back afterwards (nothing is written when they are stored)."""
    return level.costs() or level_costs(level)
