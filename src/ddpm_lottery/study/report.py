"""OUT/report.html of a study: its findings table, then every run of the study as the report shows runs."""

from __future__ import annotations

import html
from pathlib import Path

from ddpm_lottery.reporting.report import build_report
from ddpm_lottery.runs.outputs import StudyFolder
from ddpm_lottery.runs.run import Run
from ddpm_lottery.study import spec  # spec.SHIPPED, looked up when the report is written (tests replace it)
from ddpm_lottery.study.spec import Study


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
    shipped = study.path.parent == spec.SHIPPED
    # a shipped study is named by where it lives in the package, not by this machine's install path
    where = f"shipped with ddpm-lottery as studies/{study.path.name}" if shipped else str(study.path)
    intro = (
        f"<p>Study <b>{html.escape(study.settings.name)}</b> ({html.escape(where)}). "
        f"{html.escape(study.settings.description)}</p>"
    )
    shown = study.path.stem if shipped else study.path
    command = f"ddpm-lottery study {shown} --out {out}"
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


__all__ = ["write_study_report"]
