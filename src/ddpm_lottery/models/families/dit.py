"""The DiT family: diffusers' ``DiTTransformer2DModel`` in pixel space (Peebles & Xie 2023).

A DiT cuts the image into ``patch_size`` patches (a Conv2d with kernel = stride = patch), runs
``num_layers`` transformer blocks over the tokens and projects each token back to its patch.  Each block is
conditioned by adaLN-Zero: c = MLP(sinusoid(t)) + label_table[y], then SiLU and ``norm1.linear`` (D -> 6D) give
the shift, scale and gate of its attention and its MLP.  diffusers gives every block its own timestep MLP and
label table; the final layer reuses block 0's.

What this family changes from diffusers, and why:

* **Initialisation**: the DiT paper's (its ``initialize_weights``): Xavier-uniform Linear weights and the patch
  embedding's (flattened), zero biases, N(0, 0.02) timestep-MLP weights and label tables, and adaLN-Zero: every
  ``norm1.linear`` and the final layer (``proj_out_1``, ``proj_out_2``) all zero, so each block starts as the
  identity and the network predicts zero.  diffusers zero-initialises neither.
* **Label dropout**: diffusers replaces 10 % of the labels by the null class K in ``train()`` mode, drawing
  from the global RNG, which no run can replay.  Every label table's ``dropout_prob`` is set to 0 (the table
  keeps its K + 1 rows, so the null class stays addressable); a run that drops labels draws its own.
* **Labels**: ``class_labels`` is always passed; an unconditional DiT is a 1-class DiT called with label 0.

Its modules (for ``varying``'s j and for CKA over depth), in forward order: ``pos_embed`` (the patch
embedding), ``transformer_blocks.0`` ... ``transformer_blocks.{depth-1}``, then ``proj_out`` (the final
adaLN modulation and the output projection).  Never call ``fuse_qkv_projections()`` on a masked DiT: it
replaces the masked q/k/v projections by a new, unmasked one.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import DiTTransformer2DModel
from diffusers.models.embeddings import LabelEmbedding

from ddpm_lottery.models.families.family import Family
from ddpm_lottery.utils.errors import UserError

# The DiT paper's block (its DiT-S/B/L/XL): LayerNorm eps 1e-6 without affine parameters, GELU (tanh) MLP of
# width 4D, biased q/k/v, no dropout, adaLN-Zero.  In pixel space here, so in_channels follows the data.
_PAPER = dict(
    dropout=0.0,
    attention_bias=True,
    activation_fn="gelu-approximate",
    norm_type="ada_norm_zero",
    norm_elementwise_affine=False,
    norm_eps=1e-6,
    upcast_attention=False,
    num_embeds_ada_norm=1,  # 1 class: unconditional
)

PRESETS: dict[str, dict[str, Any]] = {
    # 28x28 digits, patch 4 (49 tokens), depth 6, D = 96: ~1.22M prunable weights, the size of the 2x U-Net
    "dit-small": dict(
        sample_size=28, patch_size=4, num_layers=6, num_attention_heads=4, attention_head_dim=24, **_PAPER
    ),
    # the same with D = 128: ~2.10M prunable weights
    "dit-medium": dict(
        sample_size=28, patch_size=4, num_layers=6, num_attention_heads=4, attention_head_dim=32, **_PAPER
    ),
    # DiT-S/2 (D = 384, 6 heads, depth 12, patch 2) on 32x32x3 pixels: ~35M prunable weights, the size of
    # ddpm-cifar10's U-Net; a GPU network, dry-run only on a CPU
    "dit-s2": dict(
        sample_size=32,
        in_channels=3,
        patch_size=2,
        num_layers=12,
        num_attention_heads=6,
        attention_head_dim=64,
        **_PAPER,
    ),
}

PURPOSES = {
    "dit-small": "DiT for 28x28 digits, D=96, depth 6, patch 4, ~1.2M prunable",
    "dit-medium": "DiT for 28x28 digits, D=128, depth 6, patch 4, ~2.1M prunable",
    "dit-s2": "DiT-S/2-like (Peebles & Xie 2023) on 32x32x3 pixels, ~35M prunable",
}

#: Layer groups in forward order within a block, and which layers each holds.
GROUPS = ("embed", "timestep", "adaln", "attention", "mlp", "final")


class DiTFamily(Family):
    name = "dit"
    class_name = "DiTTransformer2DModel"
    presets = PRESETS
    purposes = PURPOSES
    overrides = ("sample_size", "patch_size", "num_layers", "num_attention_heads", "attention_head_dim")
    layer_groups = GROUPS
    block_prefixes = ("transformer_blocks.",)
    channel_tickets = False
    folder = "transformer"
    pipeline = (
        None  # DiTPipeline needs a VAE and hard-codes the null class 1000: an export is transformer/ + scheduler/
    )

    def model_class(self) -> type:
        return DiTTransformer2DModel

    def check(self, kwargs: dict[str, Any], what: str) -> None:
        if kwargs.get("norm_type", "ada_norm_zero") != "ada_norm_zero":
            raise UserError(f"{what}: a DiT with norm_type {kwargs['norm_type']!r}; this tool trains adaLN-Zero DiTs")
        size, patch = kwargs.get("sample_size", 32), kwargs.get("patch_size", 2)
        if patch is None or size % patch:
            raise UserError(
                f"{what}: sample size {size} is not divisible by the patch size {patch}; "
                "pick a multiple of it with --image-size / --sample-size, or another --patch-size"
            )
        classes = kwargs.get("num_embeds_ada_norm")
        if not isinstance(classes, int) or not 1 <= classes <= 1_000_000:
            raise UserError(f"{what}: num_embeds_ada_norm is {classes!r}; a DiT needs 1 to 1,000,000 classes")

    def prepare(self, model: torch.nn.Module, fresh: bool = False) -> torch.nn.Module:
        for module in model.modules():
            if isinstance(module, LabelEmbedding):
                module.dropout_prob = 0.0  # diffusers' own dropout draws from the global RNG: see the docstring
        if fresh:
            initialise(model)
        return model

    def network_config(self, model: torch.nn.Module) -> dict[str, Any]:
        # _class_name tells network.json's reader which family rebuilds it (a U-Net's has none: the old default)
        return {"_class_name": self.class_name, **super().network_config(model)}

    def num_classes(self, config) -> int:
        classes = int(config.num_embeds_ada_norm)
        return 0 if classes == 1 else classes

    def with_classes(self, kwargs, classes):
        # every block's label table has classes + 1 rows: the last is the null class of guidance
        return {**kwargs, "num_embeds_ada_norm": max(classes, 1)}

    def denoise(self, model, x, t, labels=None):
        if t.dim() == 0:
            t = t.expand(len(x))
        if labels is None:  # an unconditional DiT is a 1-class DiT: every image has label 0
            labels = torch.zeros(len(x), dtype=torch.long, device=x.device)
        return model(x, timestep=t, class_labels=labels).sample

    def block_of(self, layer_name: str) -> str:
        parts = layer_name.split(".")
        if parts[0] == "transformer_blocks":
            return ".".join(parts[:2])
        if parts[0].startswith("proj_out"):
            return "proj_out"
        return parts[0]

    def layer_group(self, layer_name: str) -> str:
        if layer_name.startswith("pos_embed."):
            return "embed"
        if layer_name.startswith("proj_out"):
            return "final"
        if ".norm1.emb.timestep_embedder." in layer_name:
            return "timestep"
        if layer_name.endswith(".norm1.linear"):
            return "adaln"
        if ".attn1." in layer_name:
            return "attention"
        if ".ff." in layer_name:
            return "mlp"
        raise UserError(f"{layer_name} is a DiT layer this tool does not know; it prunes diffusers' DiT blocks")


DIT = DiTFamily()


@torch.no_grad()
def initialise(model: torch.nn.Module) -> None:
    """The DiT paper's initialisation (facebookresearch/DiT ``initialize_weights``), drawn from the global RNG
    (the caller seeds it), in registration order."""
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
    patch = model.pos_embed.proj
    torch.nn.init.xavier_uniform_(patch.weight.view(patch.weight.shape[0], -1))
    torch.nn.init.zeros_(patch.bias)
    for block in model.transformer_blocks:
        embedding = block.norm1.emb
        torch.nn.init.normal_(embedding.class_embedder.embedding_table.weight, std=0.02)
        torch.nn.init.normal_(embedding.timestep_embedder.linear_1.weight, std=0.02)
        torch.nn.init.normal_(embedding.timestep_embedder.linear_2.weight, std=0.02)
        torch.nn.init.zeros_(block.norm1.linear.weight)  # adaLN-Zero: the block starts as the identity
        torch.nn.init.zeros_(block.norm1.linear.bias)
    for layer in (model.proj_out_1, model.proj_out_2):  # and the network predicts zero
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
