"""The quickstart: the smallest shipped study (``study/shipped/quickstart.toml``), ending in its findings and report.

It is ``ddpm-lottery study quickstart --out runs/quickstart``: one code path for every study.  Its budget
(one data seed, 400 steps per level, about 12 minutes on two CPU cores) is chosen from measurement so
that the held-out loss and the domain Fréchet distance separate a ticket from its re-init control and
from the dense model; what it cannot decide, its findings say, naming the study that can.
"""

from __future__ import annotations

from pathlib import Path

from ddpm_lottery.findings.render import markdown
from ddpm_lottery.runs.outputs import StudyFolder
from ddpm_lottery.study.execute import execute_study


def quickstart(out: str | Path = "runs/quickstart", *, progress: bool = True, log=print) -> Path:
    """Run (or resume) the quickstart study into ``out``; returns the report's path."""
    _, result = execute_study("quickstart", out, progress=progress, log=log)

    log("")
    log(markdown(result["findings"]))
    report = StudyFolder(out).report
    log(f"report: {report} (open it in a browser); findings: {StudyFolder(out).findings_md}")
    return report
