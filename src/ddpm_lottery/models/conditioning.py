"""Class conditioning: the labels a network is trained and sampled with, and classifier-free guidance.

A class-conditional network of K classes has a label table of K + 1 rows: row K is the *null* class,
the "no label" input that classifier-free guidance (Ho & Salimans 2022) contrasts with the label.

* Training replaces a fraction of the labels (``--label-dropout``) with the null class.  The drop is
  drawn from a generator the caller seeds per step (the trainer's step generator), never from the
  global RNG, so a resumed run draws the same drops as an uninterrupted one.
* Sampling gives image i the class ``classes[i mod k]`` (default: every class in turn), a function of
  the image's index alone, so a sampling drawn in parts, or with another batch size, is the same, and
  N images are balanced over the classes.  With guidance scale s the prediction is
  ``uncond + s * (cond - uncond)`` from one call on the doubled batch ``[x; x]`` with labels
  ``[y; null]``; s = 1 is the conditional prediction alone (one call, no doubling) and s = 0 the
  unconditional one.
* An unconditional network takes no labels: every function here leaves it exactly as it was.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ddpm_lottery.data.images import DATASET_CLASSES, ImageSet
from ddpm_lottery.models.families import denoise
from ddpm_lottery.utils.errors import UserError

#: The guidance scale of a class-conditional model when --guidance-scale is not given: the conditional
#: prediction alone (no doubled batch).
DEFAULT_GUIDANCE_SCALE = 1.0


def data_classes(images: ImageSet) -> int:
    """The number of classes of a labelled dataset (its class names, else its largest label + 1)."""
    if images.labels is None:
        raise UserError(
            f"--class-conditional needs class labels, and {images.name} from {images.source} has none; "
            "put the images in one subfolder per class, or drop --class-conditional"
        )
    count = len(images.classes) if images.classes is not None else int(images.labels.max()) + 1
    if count < 2:
        raise UserError(
            f"--class-conditional needs at least two classes, and {images.name} from {images.source} has one; "
            "drop --class-conditional"
        )
    return count


def adopt_classes(config, images: ImageSet) -> None:
    """Fill in a class-conditional run's class count from its data, and check the labels fit it.

    A run made earlier (a resumed or extended search, a dense run reused) already holds the count: the
    data must then still have labels in its range."""
    model = config.model
    if not model.class_conditional:
        return
    found = data_classes(images)
    if model.num_classes is None:
        model.num_classes = found
    elif found > model.num_classes:
        raise UserError(
            f"the data has labels up to {found - 1}, outside the {model.num_classes} classes of this run's "
            "network; use the data the run was made with, or a new --out folder"
        )


def planned_model(config):
    """A run's model settings before its data is loaded (a dry run's cost estimate): a class-conditional run
    gets its dataset's known class count, or 10 for an image folder, whose count only its data says; the
    label table is a lookup, so the count barely moves a network's cost."""
    model = config.model
    if not model.class_conditional or model.num_classes is not None:
        return model
    planned = copy.copy(model)
    planned.num_classes = DATASET_CLASSES.get(config.data.dataset, 10)
    return planned


def run_classes(config) -> int | None:
    """The classes a run's network is conditioned on (its config's), None for an unconditional run."""
    return config.model.num_classes if config.model.class_conditional else None


def drop_labels(labels: torch.Tensor, rate: float, null: int, generator: torch.Generator) -> torch.Tensor:
    """``labels`` with each replaced by ``null`` at ``rate``, drawn from ``generator`` (one draw per label)."""
    if rate <= 0:
        return labels
    dropped = torch.rand(labels.shape, generator=generator, device=generator.device) < rate
    return torch.where(dropped.to(labels.device), torch.full_like(labels, null), labels)


@dataclass(frozen=True)
class Guidance:
    """How a class-conditional network is sampled: which classes, and the guidance scale."""

    num_classes: int
    classes: tuple[int, ...] = ()  # () = every class in turn
    scale: float = DEFAULT_GUIDANCE_SCALE

    @property
    def null(self) -> int:
        return self.num_classes

    def chosen(self) -> tuple[int, ...]:
        return self.classes or tuple(range(self.num_classes))

    @property
    def passes(self) -> int:
        """Network evaluations per image and step: two (conditional and unconditional) unless s is 1 or 0."""
        return 1 if self.scale in (0, 1) else 2

    def labels(self, first: int, count: int) -> torch.Tensor:
        """The requested class of images ``first .. first + count - 1``."""
        chosen = torch.tensor(self.chosen(), dtype=torch.long)
        return chosen[torch.arange(first, first + count) % len(chosen)]

    def predict(self, model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The guided prediction ``uncond + s * (cond - uncond)``; one undoubled call at s = 1 or s = 0."""
        if self.scale == 1:
            return denoise(model, x, t, labels)
        null = torch.full_like(labels, self.null)
        if self.scale == 0:
            return denoise(model, x, t, null)
        both = denoise(model, torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]))
        conditional, unconditional = both.chunk(2)
        return unconditional + self.scale * (conditional - unconditional)

    def protocol(self) -> dict:
        """What of the guidance decides the images, for a sampling protocol's key."""
        return {"guidance_scale": self.scale, "classes": list(self.classes) or "balanced"}


def guidance_folder_suffix(guidance: Guidance | None) -> str:
    """What a sample folder's name adds for guided samples ('' for an unconditional model)."""
    if guidance is None:
        return ""
    classes = "-classes" + "_".join(map(str, guidance.classes)) if guidance.classes else ""
    return f"-guidance{guidance.scale:g}{classes}"


def guidance_for(sampling, num_classes: int | None) -> Guidance | None:
    """The guidance a sampling section asks of a network of ``num_classes`` classes (None: unconditional).

    Guidance settings on an unconditional network, and classes outside the network's, are refused."""
    if num_classes is None:
        if sampling.guidance_scale is not None:
            raise UserError("--guidance-scale needs a class-conditional model, and this one is unconditional; drop it")
        if sampling.classes:
            raise UserError("--classes needs a class-conditional model, and this one is unconditional; drop it")
        return None
    check_classes(sampling.classes, num_classes)
    scale = DEFAULT_GUIDANCE_SCALE if sampling.guidance_scale is None else sampling.guidance_scale
    return Guidance(num_classes, tuple(sampling.classes), scale)


def check_classes(classes: Sequence[int], num_classes: int) -> None:
    outside = sorted({c for c in classes if not 0 <= c < num_classes})
    if outside:
        raise UserError(
            f"--classes {','.join(map(str, outside))} is outside the model's {num_classes} classes "
            f"(0-{num_classes - 1}); give classes in that range"
        )
