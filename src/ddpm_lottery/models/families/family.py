"""What a network family is: the one place that knows how a kind of diffusers network is built, called,
divided into blocks and pruned.

The lottery loop, the kernels, the measures and the runs hold a network and ask its family
(:func:`ddpm_lottery.models.families.family_of`); none of them tests for an architecture.  A new family is a
subclass here and an entry in the registry (``families/__init__.py``), and touches nothing outside ``models/``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ddpm_lottery.utils.errors import UserError


class Family:
    """A kind of diffusers network.  Subclasses set the class attributes and override what differs."""

    name: str = ""  # short, for messages and docs: "unet", "dit"
    class_name: str = ""  # the diffusers class, as config.json's _class_name names it
    presets: ClassVar[dict[str, dict[str, Any]]] = {}  # preset name -> keyword arguments of the class
    purposes: ClassVar[dict[str, str]] = {}  # preset name -> one line for `ddpm-lottery presets`
    overrides: tuple[str, ...] = ()  # the ModelConfig settings that override this family's presets
    layer_groups: tuple[str, ...] = ()  # the groups --layer-groups chooses from; () = this family has none
    block_prefixes: tuple[str, ...] = ()  # layer-name prefixes of the repeated blocks (the rest is the stem)
    channel_tickets: bool = False  # whether --structure channel (and compaction) can prune it
    folder: str = ""  # the sub-folder of an export that holds the network (diffusers' pipeline component name)
    pipeline: str | None = None  # the diffusers pipeline class an export is, if one fits a pixel-space network

    def model_class(self) -> type:
        raise NotImplementedError

    # -- building --------------------------------------------------------------------------------------

    def check(self, kwargs: dict[str, Any], what: str) -> None:
        """Refuse settings the class would accept but this tool cannot train, in one line each."""

    def build(self, kwargs: dict[str, Any], from_config: bool = False) -> torch.nn.Module:
        """A fresh network: the class's own initialisation, then the family's (:meth:`prepare`)."""
        cls = self.model_class()
        return self.prepare(cls.from_config(kwargs) if from_config else cls(**kwargs), fresh=True)

    def prepare(self, model: torch.nn.Module, fresh: bool = False) -> torch.nn.Module:
        """Make a constructed network the one this tool trains (``fresh``: its weights are still the
        class's own initialisation, which the family may replace by its paper's)."""
        return model

    def network_config(self, model: torch.nn.Module) -> dict[str, Any]:
        """What ``network.json`` stores: the class's config (tuples as lists), enough to rebuild the network."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.config.items() if not k.startswith("_")}

    # -- calling ---------------------------------------------------------------------------------------

    def num_classes(self, config) -> int:
        """The classes the network is conditioned on; 0 for an unconditional network.  Label K (= this) is the
        null class of classifier-free guidance."""
        return 0

    def with_classes(self, kwargs: dict[str, Any], classes: int) -> dict[str, Any]:
        """The class's keyword arguments for a network conditioned on ``classes`` labels (0: unconditional)."""
        if classes:
            raise UserError(f"a {self.class_name} of this tool is unconditional")
        return kwargs

    def denoise(
        self, model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The network's prediction for noisy images ``x`` at timesteps ``t`` (1-D), given class ``labels``."""
        raise NotImplementedError

    def example_input(self, model: torch.nn.Module, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, t) zeros of the network's input shape on its device: for tracing and counting."""
        config = model.config
        size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
        device = next(model.parameters()).device
        return (
            torch.zeros(batch, config.in_channels, size, size, device=device),
            torch.zeros(batch, dtype=torch.long, device=device),
        )

    # -- pruning ---------------------------------------------------------------------------------------

    def is_prunable(self, module: torch.nn.Module) -> bool:
        """The layers whose weights a ticket masks: every Conv2d and Linear (never biases, norms, embeddings)."""
        return isinstance(module, (torch.nn.Conv2d, torch.nn.Linear))

    def block_of(self, layer_name: str) -> str:
        """The block a layer belongs to: a module of the varying schedule and of CKA over depth."""
        return layer_name.split(".")[0]

    def layer_group(self, layer_name: str) -> str:
        """The group (of :attr:`layer_groups`) a layer belongs to."""
        return ""

    def check_groups(self, groups: tuple[str, ...]) -> None:
        if not groups:
            return
        if not self.layer_groups:
            raise UserError(f"--layer-groups chooses among a DiT's layers; a {self.class_name} has no layer groups")
        unknown = [g for g in groups if g not in self.layer_groups]
        if unknown:
            raise UserError(
                f"--layer-groups: {unknown[0]!r} is not a layer group of a {self.class_name}; "
                f"choose from {', '.join(self.layer_groups)}"
            )
