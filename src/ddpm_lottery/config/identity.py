"""What makes a run's identity: the result-affecting settings, and the run hash built from them.

The run hash is a digest of the *result-affecting* fields (metadata ``hashed``, True unless a
setting says otherwise) that differ from their default, so adding a new field with a default
keeps existing runs addressable (OpenLTH's rule).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields
from typing import Any

from ddpm_lottery.config.composites import _sections


def non_default(config) -> dict[str, Any]:
    """The result-affecting fields that differ from their default, as {section.field: value}."""
    out: dict[str, Any] = {}
    for section_name, section in _sections(config):
        for f in fields(section):
            if not f.metadata.get("hashed", True):
                continue
            value = getattr(section, f.name)
            if value != f.default:
                key = f"{section_name}.{f.name}" if section_name else f.name
                out[key] = list(value) if isinstance(value, tuple) else value
    return out


def hashed_keys(config) -> list[str]:
    """Every result-affecting setting as ``section.field`` (``field`` for a single section).

    :func:`non_default` leaves out settings at their default, so comparing two configs through it
    misses a default that changed between versions; comparing every hashed key does not.
    """
    return [
        f"{section_name}.{f.name}" if section_name else f.name
        for section_name, section in _sections(config)
        for f in fields(section)
        if f.metadata.get("hashed", True)
    ]


def config_hash(config) -> str:
    payload = json.dumps(non_default(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:12]
