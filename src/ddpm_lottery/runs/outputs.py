"""The folders that single commands write beside runs (or at a user's --out): samples, CKA, the frontier, studies."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ddpm_lottery.runs.layout import level_name
from ddpm_lottery.runs.records import CkaSummary, read_record


@dataclass(frozen=True)
class SampleFolder:
    """What ``ddpm-lottery sample`` writes: a grid, the images (on request) and how they were made."""

    dir: Path

    @property
    def grid(self) -> Path:
        return self.dir / "grid.png"

    @property
    def npz(self) -> Path:
        return self.dir / "samples.npz"

    @property
    def info(self) -> Path:
        return self.dir / "info.json"


@dataclass(frozen=True)
class CkaFolder:
    """What ``ddpm-lottery cka`` writes: the per-layer table, its summary and Figure 1."""

    dir: Path

    @property
    def table(self) -> Path:
        return self.dir / "cka.csv"

    @property
    def summary(self) -> Path:
        return self.dir / "cka.json"

    def read_summary(self) -> dict:
        """cka.json; missing or corrupt, the folder is recomputed whole (a study skips a pair whose folder exists)."""
        return read_record(
            self.summary,
            CkaSummary,
            "CKA result",
            f"delete {self.dir} and re-run the command that writes it (`ddpm-lottery study` or `ddpm-lottery cka`)",
            finite=False,
        )

    @property
    def figure(self) -> Path:
        return self.dir / "figure1.png"


@dataclass(frozen=True)
class FrontierFolder:
    """What ``ddpm-lottery frontier`` writes."""

    dir: Path

    @property
    def table(self) -> Path:
        return self.dir / "frontier.md"

    @property
    def figure(self) -> Path:
        return self.dir / "frontier.png"

    @property
    def record(self) -> Path:
        return self.dir / "frontier.json"


class StudyFolder:
    """A study's folder: its record, its runs, the CKA of its ticket pairs and its findings::

    OUT/study.json           the study's declaration (a folder holds one study)
    OUT/runs/<run>/          every run of the study, laid out as above
    OUT/cka/<search>-seed<a>-vs-seed<b>/level_XX/   cka.csv, cka.json, figure1.png
    OUT/findings.json, findings.md, report.html
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def record(self) -> Path:
        return self.root / "study.json"

    def is_study(self) -> bool:
        return self.record.is_file()

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run_path(self, name: str) -> Path:
        return self.runs_dir / name

    def cka_folder(self, search: str, seed_a: int, seed_b: int, level: int) -> CkaFolder:
        return CkaFolder(self.root / "cka" / f"{search}-seed{seed_a}-vs-seed{seed_b}" / level_name(level))

    def cka_folders(self) -> list[CkaFolder]:
        folders = sorted(p.parent for p in (self.root / "cka").glob("*/level_*/cka.json"))
        return [CkaFolder(p) for p in folders]

    @property
    def findings_json(self) -> Path:
        return self.root / "findings.json"

    @property
    def findings_md(self) -> Path:
        return self.root / "findings.md"

    @property
    def report(self) -> Path:
        return self.root / "report.html"
