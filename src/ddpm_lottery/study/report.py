"""OUT/report.html of a study: its findings table, then every run of the study as the report shows runs."""

from __future__ import annotations

import html
from pathlib import Path

from ddpm_lottery.reporting.report import build_report
from ddpm_lottery.runs.outputs import StudyFolder
from ddpm_lottery.runs.run import Run
from ddpm_lottery.study import spec  # spec.SHIPPED, looked up when the report is written (tests replace it)
from ddpm_lottery.study.spec import Study


def study_argument(study: Study) -> str:
    """What ``ddpm-lottery study`` is given to run this study: a shipped study's name, else its file."""
    return study.path.stem if study.path.parent == spec.SHIPPED else str(study.path)


def study_origin(study: Study) -> str:
    """Where the study comes from: a shipped study by the command that runs it (its file's place inside the
    package is no path a reader can open), any other by its file."""
    if study.path.parent == spec.SHIPPED:
        return f"shipped with ddpm-lottery: `ddpm-lottery study {study_argument(study)}` runs it"
    return str(study.path)


def write_study_report(study: Study, out: Path, findings: dict, log=print) -> Path | None:
    """OUT/report.html: the findings table first, then every run of the study as the report shows runs."""
    folder = StudyFolder(out)
    runs = [
        folder.run_path(r.name)
        for r in study.runs(out)
        if Run.is_run(folder.run_path(r.name)) and Run.open(folder.run_path(r.name)).finished_levels()
    ]
    if not runs:
        return None
    cka = folder.cka_folders()
    intro = (
        f"<p>Study <b>{html.escape(study.settings.name)}</b> ({html.escape(study_origin(study))}). "
        f"{html.escape(study.settings.description)}</p>"
    )
    command = f"ddpm-lottery study {study_argument(study)} --out {out}"
    return build_report(
        runs,
        folder.report,
        cka_pairs=[c.dir for c in cka],
        title=f"ddpm-lottery study: {study.settings.name}",
        intro=intro,
        commands=[command],
        findings=findings,
        log=log,
    )


__all__ = ["study_argument", "study_origin", "write_study_report"]
