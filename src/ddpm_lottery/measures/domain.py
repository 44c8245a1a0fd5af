"""A small domain classifier whose features rank generated images at CPU scale.

Inception FID needs thousands of samples and ~8 images/s on two CPU cores, and on 28x28 digits its
features (ImageNet, 299x299) see mostly the resize.  A small CNN trained to classify the dataset's own
training images gives features that describe exactly what matters here (is this a recognisable digit,
which one, how is it drawn), with few dimensions (64), so a Fréchet distance on them is stable at a few
hundred samples and costs seconds.  This is the measure of the paper's effect used by the issue that
sized this project (a Fréchet distance on a digit classifier's features).

The network is trained once per training set (keyed by the data fingerprint, the architecture and the
seed) and cached beside the FID reference features.  It needs labels: datasets without them (an
image folder without class folders) cannot use this measure.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ddpm_lottery.measures.inception import FrechetReference
from ddpm_lottery.utils.errors import UserError
from ddpm_lottery.utils.files import load_tensors, save_tensors

FEATURES = 64
ARCHITECTURE = "conv32-conv64-conv64-fc64, GroupNorm, SiLU, v1"


class DomainNet(torch.nn.Module):
    """uint8 images (N, C, H, W) -> class logits, and ``features`` (N, 64) before the last layer."""

    def __init__(self, channels: int, classes: int):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(channels, 32, 3, padding=1),
            torch.nn.GroupNorm(8, 32),
            torch.nn.SiLU(),
            torch.nn.Conv2d(32, 64, 3, stride=2, padding=1),
            torch.nn.GroupNorm(8, 64),
            torch.nn.SiLU(),
            torch.nn.Conv2d(64, 64, 3, stride=2, padding=1),
            torch.nn.GroupNorm(8, 64),
            torch.nn.SiLU(),
            torch.nn.AdaptiveAvgPool2d(2),
            torch.nn.Flatten(),
            torch.nn.Linear(256, FEATURES),
            torch.nn.SiLU(),
        )
        self.head = torch.nn.Linear(FEATURES, classes)

    @staticmethod
    def prepare(images: torch.Tensor) -> torch.Tensor:
        return images.float() / 127.5 - 1.0

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(self.prepare(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def _key(fingerprint: dict, channels: int, classes: int, seed: int, steps: int) -> str:
    payload = json.dumps(
        {
            "data": fingerprint.get("digest"),
            "channels": channels,
            "classes": classes,
            "seed": seed,
            "steps": steps,
            "architecture": ARCHITECTURE,
        },
        sort_keys=True,
    )
    return f"domain-{fingerprint.get('dataset')}-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"


def train_domain_net(
    images: torch.Tensor, labels: torch.Tensor, *, steps: int = 400, batch: int = 64, seed: int = 0
) -> tuple[DomainNet, dict]:
    """Adam on cross-entropy with light shift augmentation; deterministic for a seed on one device."""
    classes = int(labels.max()) + 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DomainNet(images.shape[1], classes)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    net.train()
    for _step in range(steps):
        index = torch.randint(0, len(images), (batch,), generator=generator)
        x = images[index]
        shift = torch.randint(-2, 3, (2,), generator=generator)
        x = torch.roll(x, shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))
        loss = F.cross_entropy(net(x), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    net.eval()
    return net, {
        "steps": steps,
        "batch": batch,
        "seed": seed,
        "final_loss": float(loss.detach()),
        "train_seconds": time.perf_counter() - started,
        "architecture": ARCHITECTURE,
    }


def accuracy(net: DomainNet, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        predictions = torch.cat([net(images[i : i + 512]).argmax(1) for i in range(0, len(images), 512)])
    return float((predictions == labels).float().mean())


def domain_net(
    train_images, fingerprint: dict, *, cache_dir: Path, seed: int = 0, steps: int = 400, log=print
) -> tuple[DomainNet, dict]:
    """The domain network of a training set: from the cache, or trained now and cached."""
    if train_images.labels is None:
        raise UserError(
            f"the domain measure needs class labels, and {train_images.name} from {train_images.source} "
            "has none; use image folders with one subfolder per class, or skip this measure"
        )
    images, labels = train_images.images, train_images.labels.long()
    classes = int(labels.max()) + 1
    key = _key(fingerprint, images.shape[1], classes, seed, steps)
    path = Path(cache_dir) / f"{key}.safetensors"
    net = DomainNet(images.shape[1], classes)
    if path.is_file():
        try:
            state = load_tensors(path, "cached domain network")
            net.load_state_dict(state)
            net.eval()
            return net, {"key": key, "cached": True}
        except (UserError, RuntimeError):
            pass  # a damaged cache entry is retrained and replaced
    net, info = train_domain_net(images, labels, steps=steps, seed=seed)
    save_tensors(path, net.state_dict(), {"key": key, "architecture": ARCHITECTURE})
    log(
        f"domain network: trained on {len(images):,} {train_images.name} images in {info['train_seconds']:.0f} s "
        f"(final loss {info['final_loss']:.3f}), cached as {path.name}"
    )
    return net, {"key": key, "cached": False, **info}


@torch.no_grad()
def class_agreement(net: DomainNet, images: torch.Tensor, requested: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Per image, whether the classifier names the class it was generated for (float 0/1, for resampling)."""
    predicted = torch.cat([net(images[i : i + batch]).argmax(1) for i in range(0, len(images), batch)])
    return (predicted == requested.to(predicted.device)).double()


@torch.no_grad()
def domain_features(net: DomainNet, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
    return torch.cat([net.features(images[i : i + batch]) for i in range(0, len(images), batch)]).double()


# ----------------------------------------------------------------------------------------------
# Validation: what the measure says of images whose quality is known


def box_blur(images: torch.Tensor, size: int = 5) -> torch.Tensor:
    """uint8 images blurred with a ``size`` x ``size`` box: recognisably degraded, not destroyed."""
    channels = images.shape[1]
    kernel = torch.ones(channels, 1, size, size) / size**2
    blurred = F.conv2d(images.float(), kernel, padding=size // 2, groups=channels)
    return blurred.round().clamp(0, 255).to(torch.uint8)


def uniform_noise(like: torch.Tensor, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, like.shape, generator=generator, dtype=torch.uint8)


def domain_validation(
    net: DomainNet,
    train_images: torch.Tensor,
    held_out_images: torch.Tensor,
    held_out_labels: torch.Tensor | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """The domain FD (against every training image) of: held-out real images, as many training images
    (the floor at this N), the held-out images blurred, and uniform noise; plus held-out accuracy.

    A measure fit to rank models must order these real < blurred < noise, with real near its floor."""
    reference = FrechetReference(domain_features(net, train_images))
    count = len(held_out_images)
    generator = torch.Generator().manual_seed(seed)
    same_count = train_images[torch.randperm(len(train_images), generator=generator)[:count]]
    result = {
        "n": count,
        "reference": len(train_images),
        "real": reference.distance(domain_features(net, held_out_images)),
        "floor": reference.distance(domain_features(net, same_count)),
        "blurred": reference.distance(domain_features(net, box_blur(held_out_images))),
        "noise": reference.distance(domain_features(net, uniform_noise(held_out_images, seed))),
    }
    if held_out_labels is not None:
        result["accuracy"] = accuracy(net, held_out_images, held_out_labels.long())
    return result
