"""The ``compare_with`` table of a study file's ``[study]``: another study's search that finding (g) compares
one of this study's searches with.

A table, not a setting of :class:`~ddpm_lottery.config.StudySettings`: the settings hold single values,
and these three names mean something only together.  It changes no run, so the study folder keeps it as a
note beside its declaration (:mod:`ddpm_lottery.study.folder`), and a study under way may add it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ddpm_lottery.utils.errors import UserError


@dataclass(frozen=True)
class Reference:
    """``compare_with`` in ``[study]``: another study's search whose boundary this study's search ``against``
    is compared with (finding (g)), from that study's stored runs, never retrained::

        compare_with = { study = "../cpu-widths", search = "unified-2x", against = "unified" }

    ``study`` is the other study's folder, relative to this study's folder (its ``--out``)."""

    study: str
    search: str
    against: str

    def as_note(self) -> dict:
        return {"study": self.study, "search": self.search, "against": self.against}


REFERENCE_EXAMPLE = 'compare_with = { study = "../cpu-widths", search = "unified-2x", against = "unified" }'


def read_reference(path: Path, table, searches: dict) -> Reference | None:
    """``study.compare_with``, checked as far as the file can be: the other study's folder is checked when the
    study runs and when its findings are stated, where this study's folder is known."""
    if table is None:
        return None
    fields = ("study", "search", "against")
    if not isinstance(table, dict):
        raise UserError(f"{path}: study.compare_with must be a table, e.g. {REFERENCE_EXAMPLE}")
    unknown = [key for key in table if key not in fields]
    if unknown:
        raise UserError(
            f"{path}: study.compare_with has no field {unknown[0]!r}; it takes {', '.join(fields)}, e.g. {REFERENCE_EXAMPLE}"
        )
    for key in fields:
        if not isinstance(table.get(key), str) or not table[key].strip():
            raise UserError(f"{path}: study.compare_with.{key} must be given as text, e.g. {REFERENCE_EXAMPLE}")
    if table["against"] not in searches:
        raise UserError(
            f"{path}: study.compare_with.against names {table['against']!r}, which the study does not declare; "
            f"declared: {', '.join(searches)}"
        )
    return Reference(table["study"], table["search"], table["against"])


__all__ = ["REFERENCE_EXAMPLE", "Reference", "read_reference"]
