"""The study folder: OUT is made for one study, and holds no other.

``OUT/study.json`` records the study's declaration (what makes its runs); a study whose declaration differs
is refused in that folder, except in settings that change no result (how far its searches go) and in
searches and controls added beside the ones it has: it may grow. The notes beside the numbers
(description, decided_by, boundaries_decided_by, compare_with) follow the file.
"""

from __future__ import annotations

import time
from pathlib import Path

from ddpm_lottery.config import LotteryConfig, changes_results
from ddpm_lottery.runs.outputs import StudyFolder
from ddpm_lottery.runs.records import StudyRecord, read_record
from ddpm_lottery.study.spec import SESSION_SETTINGS, Study
from ddpm_lottery.utils.errors import UserError
from ddpm_lottery.utils.files import make_dirs, mark_tree, write_json


def check_study_folder(study: Study, out: Path) -> dict | None:
    """Refuse OUT, writing nothing, unless it is new, empty, or holds ``study`` (or the study ``study`` grows
    from); returns OUT's stored record, or None where OUT holds no study yet. A dry run asks this too, so
    that it refuses what the run would."""
    folder = StudyFolder(out)
    record = folder.record
    if record.exists():
        stored = read_record(record, StudyRecord, "study record", f"delete {record} if the folder holds no study")
        before = dict(stored.get("declaration", {}))
        before["runs"] = {k: v for k, v in before.get("runs", {}).items() if k not in SESSION_SETTINGS}
        now = study.declaration()
        if not _grows(_results_part(before), _results_part(now)):
            changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            raise UserError(
                f"{out} holds study {before.get('name')!r}, which differs from {study.path} in "
                f"{', '.join(changed)}; give another --out folder"
            )
        return stored
    if out.exists() and any(out.iterdir()) and not folder.runs_dir.is_dir():
        raise UserError(f"{out} exists and holds other files; give an empty or new --out folder for the study")
    return None


def open_study_folder(study: Study, out: Path) -> None:
    """Create OUT for ``study``, or check that OUT holds this very study."""
    record = StudyFolder(out).record
    stored = check_study_folder(study, out)
    if stored is not None:
        # settings that change no result may change (how far the searches go, above all): finished levels
        # stay, and each search checks that its levels are still the ones its settings describe
        updated = {**stored, "declaration": study.declaration(), "notes": _notes(study)}
        if updated != stored:
            write_json(record, updated)
        return
    make_dirs(out)
    # a sealed tree of its own (each run inside is one too): its declaration, its CKA records and its findings
    # carry seals, so a record edited by hand or copied from another study folder is refused on reading
    mark_tree(out, f"study {study.settings.name} {time.time():.6f}")
    write_json(
        record,
        {"declaration": study.declaration(), "notes": _notes(study), "file": str(study.path), "created": time.time()},
    )


def _results_part(declaration: dict) -> dict:
    """The declaration less the run settings that change no result (not in the run hash: how far a search
    goes, checkpoint intervals...): a study may change those in its folder, as a run may."""
    config = LotteryConfig()

    def trim(values: dict) -> dict:
        return {k: v for k, v in values.items() if changes_results(config, k)}

    return {
        **declaration,
        "runs": trim(declaration.get("runs", {})),
        "searches": {name: trim(values) for name, values in declaration.get("searches", {}).items()},
    }


def _grows(before: dict, now: dict) -> bool:
    """Whether ``now`` is ``before`` or ``before`` with more: searches added after its own (each of its own
    unchanged) and controls of more searches. Runs already made keep their settings, so their hashes."""
    same = {k: v for k, v in before.items() if k not in ("searches", "controls")}
    if same != {k: v for k, v in now.items() if k not in ("searches", "controls")}:
        return False
    searches_before, searches_now = before.get("searches", {}), now.get("searches", {})
    if list(searches_now)[: len(searches_before)] != list(searches_before):
        return False  # the first search trains the shared dense model: the order of the old ones stays
    if any(searches_now[name] != values for name, values in searches_before.items()):
        return False
    controls_now = now.get("controls", {})
    return all(
        set(sources) <= set(controls_now.get(control, [])) for control, sources in before.get("controls", {}).items()
    )


def _notes(study: Study) -> dict:
    """What the findings say beside the numbers (settings that do not change any result)."""
    notes = {
        "description": study.settings.description,
        "decided_by": study.settings.decided_by,
        "boundaries_decided_by": study.settings.boundaries_decided_by,
        "cka_search": study.settings.cka_search,
    }
    if study.reference is not None:  # only where declared: the record of a study without one stays as it was
        notes["compare_with"] = study.reference.as_note()
    return notes


__all__ = ["check_study_folder", "open_study_folder"]
