"""A run's identity: which settings enter its hash, and the data it trained on."""

from __future__ import annotations

import dataclasses
import hashlib
import json

from ddpm_lottery.config import non_default


def hashed_keys(config) -> list[str]:
    """``section.field`` of every setting that is part of a run's identity."""
    keys = []
    for outer in dataclasses.fields(config):
        section = getattr(config, outer.name)
        if dataclasses.is_dataclass(section):
            keys += [f"{outer.name}.{f.name}" for f in dataclasses.fields(section) if f.metadata.get("hashed", True)]
        elif outer.metadata.get("hashed", True):
            keys.append(outer.name)
    return keys


def data_identity(fingerprint: dict) -> str:
    """The pixels' digest, and the labels' where the run trains on them (only class-conditional runs do)."""
    digest = str(fingerprint.get("digest", ""))
    return f"{digest}+labels-{fingerprint['labels']}" if fingerprint.get("labels") else digest


def run_hash(config, fingerprint: dict | None) -> str:
    """The run's identity: its result-affecting settings and the digest of its training images."""
    payload = json.dumps(
        {"settings": non_default(config), "data": data_identity(fingerprint or {})},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:12]
