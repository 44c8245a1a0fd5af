"""Similarity of two tickets: centered kernel alignment (CKA), layer by layer in forward order.

* Weight CKA (the paper's Fig. 1): the sparsified weights of a layer reshaped to
  (output units, fan-in); K and L are kernels between the output units of ticket 1 and ticket 2.
  RBF kernels use Kornblith et al.'s bandwidth: ``threshold`` x the median pairwise distance.
* Activation CKA (the standard alternative): both networks see one shared batch of noisy inputs
  x_t at chosen timesteps; K and L are kernels between the examples' layer outputs.

HSIC(K, L) = tr(K H L H) / (n - 1)^2 with H = I - 11^T / n, and
CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), so CKA(X, X) = 1.

One concept past 400 lines: both forms share the kernels, the HSIC and the per-layer table they
write, and splitting them would put one formula in two homes.
"""

from __future__ import annotations

import csv
import math
import textwrap
from pathlib import Path

import numpy as np
import torch

from ddpm_lottery.config import CkaConfig
from ddpm_lottery.data.images import to_model_range
from ddpm_lottery.data.loaders import load_dataset
from ddpm_lottery.lottery.levels import apply_masks
from ddpm_lottery.lottery.networks import level_masks, level_network, run_network
from ddpm_lottery.models.diffusion import noise_scheduler
from ddpm_lottery.models.families import BLOCK_PREFIXES, denoise
from ddpm_lottery.pruning.strategies import random_masks
from ddpm_lottery.runs.outputs import CkaFolder
from ddpm_lottery.runs.run import Run
from ddpm_lottery.utils.errors import UserError
from ddpm_lottery.utils.figures import pyplot, save_figure
from ddpm_lottery.utils.files import atomic_path, write_json


def linear_gram(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return x @ x.T


def rbf_gram(x: torch.Tensor, threshold: float = 1.0) -> torch.Tensor:
    """exp(-d^2 / (2 sigma^2)) with sigma^2 = threshold^2 x median(d^2) (Kornblith et al. 2019)."""
    x = x.double()
    sq = (x * x).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * x @ x.T).clamp_min(0)
    median = torch.quantile(d2.flatten(), 0.5)  # interpolated, as numpy.median (Kornblith et al.)
    if median <= 0:
        median = torch.tensor(1.0, dtype=d2.dtype)
    return torch.exp(-d2 / (2 * threshold**2 * median))


def hsic(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    n = k.shape[0]
    if n < 2:  # one unit or one example: no variation to align (CKA is reported as nan)
        return torch.tensor(0.0, dtype=k.dtype)
    h = torch.eye(n, dtype=k.dtype) - torch.full((n, n), 1.0 / n, dtype=k.dtype)
    return torch.trace(k @ h @ l @ h) / (n - 1) ** 2


def cka_from_grams(k: torch.Tensor, l: torch.Tensor) -> float:
    product = float(hsic(k, k)) * float(hsic(l, l))
    if not product > 1e-30:  # a constant kernel (e.g. a layer with every weight pruned): CKA is undefined
        return float("nan")
    return float(hsic(k, l)) / math.sqrt(product)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    return cka_from_grams(linear_gram(x), linear_gram(y))


def rbf_cka(x: torch.Tensor, y: torch.Tensor, threshold: float = 1.0) -> float:
    return cka_from_grams(rbf_gram(x, threshold), rbf_gram(y, threshold))


def _units(weight: torch.Tensor) -> torch.Tensor:
    """(out, in, kh, kw) or (out, in) -> (out units, fan-in)."""
    return weight.reshape(weight.shape[0], -1)


def check_same_architecture(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], names: list[str]) -> None:
    for name in names:
        if name not in a or name not in b or a[name].shape != b[name].shape:
            raise UserError(
                "the two tickets have different architectures (tensor "
                f"{name} differs); compare tickets of the same preset and overrides"
            )


def weight_cka(
    weights_a: dict[str, torch.Tensor],
    weights_b: dict[str, torch.Tensor],
    layer_order: list[str],
    threshold: float = 1.0,
) -> list[dict]:
    """Per layer (forward order): RBF and linear CKA between the two tickets' sparsified weights."""
    check_same_architecture(weights_a, weights_b, layer_order)
    rows = []
    for index, name in enumerate(layer_order):
        x, y = _units(weights_a[name]), _units(weights_b[name])
        rows.append(
            {
                "index": index,
                "layer": name.rsplit(".weight", 1)[0],
                "kind": "conv" if weights_a[name].dim() == 4 else "linear",
                "out_units": x.shape[0],
                "weight_cka_rbf": rbf_cka(x, y, threshold),
                "weight_cka_linear": linear_cka(x, y),
            }
        )
    return rows


@torch.no_grad()
def activation_cka(
    model_a: torch.nn.Module,
    model_b: torch.nn.Module,
    noisy: dict[int, torch.Tensor],
    layer_order: list[str],
    threshold: float = 1.0,
) -> list[dict]:
    """Per layer: linear and RBF CKA of the two networks' outputs on the same x_t, per timestep and averaged."""
    results = {name: {} for name in layer_order}
    for timestep, x_t in noisy.items():
        grams = {}
        for tag, model in (("a", model_a), ("b", model_b)):
            handles = []
            modules = dict(model.named_modules())
            for layer_name in (n.rsplit(".weight", 1)[0] for n in layer_order):

                def hook(_module, _inputs, output, key=layer_name, tag=tag):
                    flat = output.detach().flatten(1).double().cpu()
                    grams[(key, tag)] = (linear_gram(flat), rbf_gram(flat, threshold))

                handles.append(modules[layer_name].register_forward_hook(hook))
            try:
                model.eval()
                denoise(model, x_t, torch.full((len(x_t),), timestep, dtype=torch.long))
            finally:
                for handle in handles:
                    handle.remove()
        for name in layer_order:
            layer = name.rsplit(".weight", 1)[0]
            (lin_a, rbf_a), (lin_b, rbf_b) = grams[(layer, "a")], grams[(layer, "b")]
            results[name][timestep] = (cka_from_grams(lin_a, lin_b), cka_from_grams(rbf_a, rbf_b))
    rows = []
    for index, name in enumerate(layer_order):
        per_t = results[name]
        row = {
            "index": index,
            "layer": name.rsplit(".weight", 1)[0],
            "activation_cka_linear": sum(v[0] for v in per_t.values()) / len(per_t),
            "activation_cka_rbf": sum(v[1] for v in per_t.values()) / len(per_t),
        }
        for timestep, (lin, rbf) in per_t.items():
            row[f"activation_cka_linear_t{timestep}"] = lin
            row[f"activation_cka_rbf_t{timestep}"] = rbf
        rows.append(row)
    return rows


def write_csv(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def figure_one(rows: list[dict], path: str | Path, title: str, baselines: bool = False) -> Path:
    """The paper's Fig. 1: CKA against layer index, upstream (left) to downstream (right)."""
    fig, ax = pyplot().subplots(figsize=(8, 3.8), dpi=110)
    index = [r["index"] for r in rows]
    conv = [r for r in rows if r.get("kind") == "conv"]
    ax.plot(
        [r["index"] for r in conv],
        [r["weight_cka_rbf"] for r in conv],
        "o-",
        ms=3,
        lw=1.2,
        label="weight CKA, RBF (paper's Fig. 1; Conv2d layers)",
    )
    ax.plot(
        index, [r["weight_cka_linear"] for r in rows], "s", ms=2.5, alpha=0.6, label="weight CKA, linear (all layers)"
    )
    if "activation_cka_linear" in rows[0]:
        ax.plot(index, [r["activation_cka_linear"] for r in rows], "-", lw=1, label="activation CKA, linear")
        ax.plot(index, [r["activation_cka_rbf"] for r in rows], "--", lw=1, label="activation CKA, RBF")
    if baselines:
        ax.plot(
            [r["index"] for r in conv],
            [r["masked_weight_cka_rbf"] for r in conv],
            ":",
            color="gray",
            lw=1.2,
            label="baseline: weight CKA, RBF, of two random initialisations under random masks",
        )
        ax.plot(
            index,
            [r["masked_activation_cka_linear"] for r in rows],
            "-.",
            color="silver",
            lw=1,
            label="baseline: activation CKA, linear, of the same",
        )
    ax.set_xlabel("layer index in forward-execution order (upstream → downstream)")
    ax.set_ylabel("CKA between the two tickets")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("\n".join(textwrap.wrap(title, 120)), fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return save_figure(fig, path)


def read_csv(path: str | Path) -> list[dict]:
    """The rows of a cka.csv, numbers as floats (nan where CKA is undefined)."""

    def value(text: str):
        try:
            return float(text)
        except ValueError:
            return text

    with open(path, newline="", encoding="utf-8") as handle:
        return [{key: value(text) for key, text in row.items()} for row in csv.DictReader(handle)]


def figure_one_over_pairs(
    tables: dict[int, list[list[dict]]],
    sparsities: dict[int, float],
    path: str | Path,
    title: str,
    kind: str = "weight_cka_rbf",
) -> Path:
    """Figure 1 of a study: one panel per level, layer by layer, the tickets' CKA and its baseline (two random
    initialisations under random masks of the same per-layer sparsity), each the mean over the ticket pairs with
    their range as a band; the dotted line splits the layers into the upstream and downstream halves the findings
    compare. ``tables[level]`` holds one cka.csv (rows) per pair."""
    levels = sorted(tables)
    fig, axes = pyplot().subplots(1, len(levels), figsize=(3.6 * len(levels), 3.4), dpi=110, squeeze=False, sharey=True)
    for ax, level in zip(axes[0], levels):
        pairs = tables[level]
        index = [row["index"] for row in pairs[0]]
        for key, style, label in ((kind, "-", "tickets"), (f"masked_{kind}", ":", "baseline")):
            values = np.array([[row[key] for row in rows] for rows in pairs], dtype=float)
            keep = ~np.isnan(values).any(axis=0)
            xs = np.array(index)[keep]
            (line,) = ax.plot(xs, values[:, keep].mean(0), style, lw=1.2, label=f"{label}, mean of {len(pairs)} pairs")
            ax.fill_between(xs, values[:, keep].min(0), values[:, keep].max(0), color=line.get_color(), alpha=0.15)
        defined = [row["index"] for row in pairs[0] if not math.isnan(row[kind])]
        ax.axvline(defined[len(defined) // 2] - 0.5, color="k", ls=":", lw=0.8)
        ax.set_title(f"level {level}: {100 * sparsities[level]:.2f} % sparse", fontsize=8)
        ax.set_xlabel("layer (forward order: upstream → downstream)", fontsize=7)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(kind.replace("_", " "))
    axes[0][0].legend(fontsize=6.5, loc="lower left")
    fig.suptitle("\n".join(textwrap.wrap(title, 55 * len(levels))), fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def noisy_batch(run, config) -> dict[int, torch.Tensor]:
    """The shared input of activation CKA: ``config.batch`` training images of ``run`` noised at each timestep."""
    network = run.network_config()
    run_config = run.config
    images = load_dataset(
        run_config.data.dataset,
        run_config.data.data_dir,
        split=run_config.data.split,
        image_size=network["sample_size"],
        channels=network["in_channels"],
    ).images
    generator = torch.Generator().manual_seed(config.seed)
    chosen = images[torch.randperm(len(images), generator=generator)[: config.batch]]
    clean = to_model_range(chosen)
    scheduler = noise_scheduler(run_config.diffusion)
    noisy = {}
    for t in config.timesteps:
        if not 0 <= t < scheduler.config.num_train_timesteps:
            raise UserError(f"timestep {t} is outside [0, {scheduler.config.num_train_timesteps})")
        noise = torch.randn(clean.shape, generator=generator)
        noisy[t] = scheduler.add_noise(clean, noise, torch.full((len(clean),), t, dtype=torch.long))
    return noisy


def cka_rows(weights_a, weights_b, model_a, model_b, noisy, order, threshold) -> list[dict]:
    """Weight and activation CKA of two networks, one row per layer in forward order."""
    rows = weight_cka(weights_a, weights_b, order, threshold)
    for row, extra in zip(rows, activation_cka(model_a, model_b, noisy, order, threshold)):
        row.update({k: v for k, v in extra.items() if k not in ("index", "layer")})
    return rows


CKA_KINDS = ("weight_cka_rbf", "weight_cka_linear", "activation_cka_linear", "activation_cka_rbf")


def compare_with_baselines(
    run_a: str | Path, run_b: str | Path, level: int, config=None, *, out: str | Path, seed_init_b: int = 1, log=print
) -> dict:
    """CKA of two tickets beside what their shapes and sparsities alone give, layer by layer.

    Weight CKA between output units is driven by each layer's shape: two *independent*
    initialisations already score high on wide-fan-in convs.  So each layer gets two baselines:
    ``init``, two freshly initialised networks (the tickets' ``--seed-init`` and ``seed_init_b``), and
    ``masked``, the same two networks under random masks with each ticket's per-tensor sparsity.
    ``above_*`` is the tickets' CKA minus the ``masked`` baseline: what training and pruning made
    similar beyond shape and sparsity.  Writes cka.csv (every column), cka.json and figure1.png.
    """
    config = config or CkaConfig()
    folder = CkaFolder(Path(out))
    result = compare_runs(run_a, run_b, level, config, out=out, log=log)
    a, b = Run.open(run_a), Run.open(run_b)
    level_a, level_b = a.level(level), b.level(level)
    seed_a = a.config.train.seed_init
    seed_b = seed_init_b if seed_init_b != seed_a else seed_a + 1
    network = a.network_config()
    init_a, init_b = run_network(a, seed=seed_a), run_network(a, seed=seed_b)
    order = a.layer_order()
    noisy = noisy_batch(a, config)
    state_a, state_b = init_a.state_dict(), init_b.state_dict()
    baselines = {"init": cka_rows(state_a, state_b, init_a, init_b, noisy, order, config.threshold)}
    masked_a = apply_masks(state_a, random_masks(level_masks(level_a), seed=1000 + seed_a))
    masked_b = apply_masks(state_b, random_masks(level_masks(level_b), seed=2000 + seed_b))
    init_a.load_state_dict(masked_a)
    init_b.load_state_dict(masked_b)
    baselines["masked"] = cka_rows(masked_a, masked_b, init_a, init_b, noisy, order, config.threshold)
    rows = result["rows"]
    for row, init_row, masked_row in zip(rows, baselines["init"], baselines["masked"]):
        for kind in CKA_KINDS:
            row[f"init_{kind}"] = init_row[kind]
            row[f"masked_{kind}"] = masked_row[kind]
            row[f"above_{kind}"] = row[kind] - masked_row[kind]
    write_csv(rows, folder.table)
    summary = dict(result["summary"])
    summary["baseline_seeds_init"] = [seed_a, seed_b]
    summary["network"] = {k: network[k] for k in ("sample_size", "in_channels")}
    halves = {}
    for kind in CKA_KINDS:
        for prefix in ("", "init_", "masked_", "above_"):
            key = f"{prefix}{kind}"
            halves[key] = half_means(rows, key)
    summary["halves"] = halves
    summary["caption"] += (
        f"; baselines: two fresh initialisations (--seed-init {seed_a} and {seed_b}), unmasked and "
        "under random masks of each ticket's per-tensor sparsity"
    )
    figure_one(rows, folder.figure, summary["caption"], baselines=True)
    write_json(folder.summary, summary)
    return {"rows": rows, "summary": summary, "out": folder.dir}


def compare_runs(
    run_a: str | Path,
    run_b: str | Path,
    level: int | None = None,
    config=None,
    *,
    out: str | Path | None = None,
    log=print,
) -> dict:
    """Weight and activation CKA between one level of two runs; writes cka.csv, cka.json and figure1.png."""
    config = config or CkaConfig()
    timesteps, batch, weights = config.timesteps, config.batch, config.weights
    threshold, seed = config.threshold, config.seed
    a, b = Run.open(run_a), Run.open(run_b)
    if a.network_config() != b.network_config():
        raise UserError(f"{a.root} and {b.root} use different networks; CKA compares tickets of the same preset")
    if batch < 3:
        raise UserError(f"--batch must be at least 3 for CKA, got {batch}")
    level_a = a.pick_level(level)
    level_b = b.level(level_a.index).require_finished()
    masks_a, masks_b = level_masks(level_a), level_masks(level_b)
    sparsity_a, sparsity_b = level_a.metrics()["sparsity"], level_b.metrics()["sparsity"]
    if abs(sparsity_a - sparsity_b) > 1e-3:
        log(
            f"warning: the two tickets differ in sparsity ({sparsity_a:.2%} vs {sparsity_b:.2%}); CKA then also "
            "reflects that difference"
        )
    seeds = (a.config.train.seed_init, b.config.train.seed_init)
    if seeds[0] != seeds[1]:
        log(
            f"warning: the two runs start from different initial weights (--seed-init {seeds[0]} vs {seeds[1]}); "
            "the paper compares two tickets of one model"
        )
    order = a.layer_order()  # one layer per tensor, in forward order
    wa = {n: w * masks_a[n] if n in masks_a else w for n, w in level_a.state(weights).items()}
    wb = {n: w * masks_b[n] if n in masks_b else w for n, w in level_b.state(weights).items()}
    rows = weight_cka(wa, wb, order, threshold)

    noisy = noisy_batch(a, config)
    activation_rows = activation_cka(
        level_network(level_a, weights), level_network(level_b, weights), noisy, order, threshold
    )
    for row, extra in zip(rows, activation_rows):
        row.update({k: v for k, v in extra.items() if k not in ("index", "layer")})
    folder = CkaFolder(Path(out)) if out else a.cka_folder(b, level_a.index)
    write_csv(rows, folder.table)
    caption = (
        f"{a.root.name} vs {b.root.name}, level {level_a.index}; weight CKA on {weights} weights ⊙ mask (RBF "
        f"bandwidth {threshold} × median distance); activation CKA on {batch} training images noised at t = "
        f"{', '.join(map(str, timesteps))} (seed {seed})"
    )
    figure_one(rows, folder.figure, caption)
    summary = {
        "run_a": str(a.root),
        "run_b": str(b.root),
        "level": level_a.index,
        "weights": weights,
        "threshold": threshold,
        "batch": batch,
        "timesteps": list(timesteps),
        "seed": seed,
        "caption": caption,
        "sparsity": [sparsity_a, sparsity_b],
        "seed_init": list(seeds),
        "mean_weight_cka_rbf_first_half": half_means(rows, "weight_cka_rbf")["upstream"],
        "mean_weight_cka_rbf_second_half": half_means(rows, "weight_cka_rbf")["downstream"],
    }
    write_json(folder.summary, summary)
    log(
        f"wrote {folder.table} and {folder.figure}: weight CKA (RBF) upstream half "
        f"{summary['mean_weight_cka_rbf_first_half']:.3f}, downstream half {summary['mean_weight_cka_rbf_second_half']:.3f}"
    )
    return {"rows": rows, "summary": summary, "out": folder.dir}


def half_means(rows: list[dict], key: str, blocks_only: bool = False) -> dict[str, float]:
    """The mean of ``key`` over the upstream and the downstream half of the layers, in forward order, leaving out
    the layers where it is undefined. ``blocks_only``: over the network's blocks (a U-Net's, a DiT's) without its stem, whose few layers
    (a random pair of time-embedding layers scores far lower than a random pair of convolutions) can carry a half."""
    values = [
        r[key]
        for r in rows
        if not math.isnan(r[key]) and (not blocks_only or str(r["layer"]).startswith(BLOCK_PREFIXES))
    ]
    half = len(values) // 2

    def mean(part: list[float]) -> float:
        return sum(part) / len(part) if part else float("nan")

    return {"upstream": mean(values[:half]), "downstream": mean(values[half:])}
