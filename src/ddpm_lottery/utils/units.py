"""How the tool writes a duration, in one place: plans, findings and reports say it alike."""

from __future__ import annotations


def duration(seconds: float) -> str:
    """Minutes below an hour, hours below two days, and past that hours with days beside them."""
    if seconds >= 48 * 3600:
        return f"{seconds / 3600:,.0f} h ({seconds / 86400:,.1f} days)"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min"
