"""The studies shipped with the package, by name: cheap to list, so ``study --help`` names them all
without importing the study code (or torch)."""

from __future__ import annotations

from pathlib import Path

SHIPPED = Path(__file__).resolve().parent / "shipped"


def shipped_studies(folder: Path = SHIPPED) -> list[str]:
    """The names ``ddpm-lottery study NAME`` accepts: the shipped study files' stems."""
    return sorted(p.stem for p in folder.glob("*.toml"))
