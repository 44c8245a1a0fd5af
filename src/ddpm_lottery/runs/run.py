"""A run folder: its config and identity, its levels, and the folders beside them."""

from __future__ import annotations

import functools
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from ddpm_lottery.config import (
    LotteryConfig,
    RunConfig,
    config_hash,
    from_dict,
    non_default,
    to_dict,
)
from ddpm_lottery.runs.checkpoints import Checkpoints
from ddpm_lottery.runs.identity import data_identity, hashed_keys, run_hash
from ddpm_lottery.runs.layout import KINDS, LAYOUT_VERSION, LEVEL_PATTERN, level_name
from ddpm_lottery.runs.level import Level
from ddpm_lottery.runs.outputs import CkaFolder, FrontierFolder, SampleFolder
from ddpm_lottery.utils.errors import UserError
from ddpm_lottery.utils.files import (
    FolderLock,
    make_dirs,
    mark_tree,
    read_json,
    remove_temporaries,
    write_json,
)
from ddpm_lottery.utils.seals import is_marked

DAMAGED = "the run folder is damaged; re-run its command into a new --out folder"


class Run:
    """A run folder: its config and identity, its levels and their files."""

    def __init__(self, root: str | Path, stored: dict):
        self.root = Path(root)
        self.stored = stored

    # -- opening and creating -------------------------------------------------------------------

    @staticmethod
    def is_run(path: str | Path) -> bool:
        return (Path(path) / "config.json").is_file()

    @classmethod
    def open(cls, path: str | Path) -> Run:
        path = Path(path)
        config_path = path / "config.json"
        if not config_path.is_file():
            raise UserError(
                f"{path} is not a run folder (no config.json); pass the --out folder of train or find-ticket"
            )
        stored = read_json(config_path, "run config", DAMAGED)
        if isinstance(stored, dict) and stored.get("layout") == LAYOUT_VERSION and stored.get("kind") not in KINDS:
            raise UserError(
                f"{path} is a {stored.get('kind')!r} run, which this version of ddpm-lottery does not know "
                f"({', '.join(KINDS)}); open it with the version that wrote it"
            )
        if not isinstance(stored, dict) or stored.get("layout") != LAYOUT_VERSION or stored.get("kind") not in KINDS:
            raise UserError(
                f"{path} was written by an older ddpm-lottery (run layout {stored.get('layout', 1) if isinstance(stored, dict) else '?'}, "
                f"this version reads layout {LAYOUT_VERSION}); re-run its command into a new --out folder"
            )
        run = cls(path, stored)
        if not is_marked(path):
            run._check_identity()
            _note_unverified(str(path.absolute()))
        return run

    def _check_identity(self) -> None:
        """A run made before seals: its stored config must still give its stored config hash and run hash, so a
        setting edited by hand in config.json is refused there too.  (A sealed config.json is covered by its
        seal, which also lets a run made under other defaults keep its stored values.)"""
        config = self.config
        if (
            config_hash(config) == self.stored.get("config_hash")
            and run_hash(config, self.data_fingerprint) == self.hash
        ):
            return
        stored, now = self.stored.get("non_default", {}), non_default(config)
        changed = sorted(k for k in set(stored) | set(now) if stored.get(k) != now.get(k)) or ["the data fingerprint"]
        raise UserError(
            f"run config {self.config_path} does not give its stored run hash ({', '.join(changed[:3])} differs: "
            f"edited by hand, or a default changed since the run was made); it is not used; {DAMAGED}"
        )

    @classmethod
    def prepare(
        cls, path: str | Path, config, kind: str, fingerprint: dict, *, extra: dict | None = None, log=print
    ) -> Run:
        """Create a run folder, or reopen one that holds this very run.

        Reopening compares every result-affecting setting with the stored config (so a changed
        default is caught, not only a changed hash) and the data fingerprint; settings that do
        not affect results (device, checkpoint interval, how far a search goes) are updated.
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise UserError(f"{path} is a regular file, not a run folder; choose another --out")
        digest = run_hash(config, fingerprint)
        if cls.is_run(path):
            run = cls.open(path)
            run._check_same(config, kind, fingerprint)
            updated = to_dict(config)
            if run.stored["config"] != updated:
                run.stored["config"] = updated
                write_json(run.config_path, run.stored)
            return run
        if path.exists() and any(p for p in path.iterdir() if not p.name.startswith(".")):
            raise UserError(f"{path} exists and is not a ddpm-lottery run folder; choose an empty or new --out folder")
        make_dirs(path)
        mark_tree(path, digest)  # before any file of the run: every one of them is sealed
        stored = {
            "layout": LAYOUT_VERSION,
            "kind": kind,
            "hash": digest,
            "config_hash": config_hash(config),
            "data": fingerprint,
            "non_default": non_default(config),
            "config": to_dict(config),
            **(extra or {}),
        }
        write_json(path / "config.json", stored)
        return cls(path, stored)

    def _check_same(self, config, kind: str, fingerprint: dict) -> None:
        if self.kind != kind:
            raise UserError(f"{self.root} already holds a {self.kind} run, not a {kind} run; use another --out folder")
        stored_config = self.stored.get("config", {})
        defaults = to_dict(type(config)())
        current = to_dict(config)
        differences = []
        for key in hashed_keys(config):
            section, _, name = key.rpartition(".")
            value = (current.get(section, {}) if section else current).get(name)
            # a setting added after the run was made held its default there
            default = (defaults.get(section, {}) if section else defaults).get(name)
            stored_value = (stored_config.get(section, {}) if section else stored_config).get(name, default)
            if stored_value != value:
                differences.append(f"{key}={json.dumps(stored_value)} there, {json.dumps(value)} here")
        if differences:
            raise UserError(
                f"{self.root} holds another run ({'; '.join(differences[:3])}"
                f"{' …' if len(differences) > 3 else ''}); use another --out folder or delete that one"
            )
        stored_data = self.stored.get("data", {})
        if data_identity(stored_data) != data_identity(fingerprint):
            raise UserError(
                f"the training data of {self.root} changed: it was {stored_data.get('count')} {stored_data.get('dataset')} "
                f"images from {stored_data.get('source')} (digest {data_identity(stored_data)}), now "
                f"{fingerprint.get('count')} images from {fingerprint.get('source')} (digest "
                f"{data_identity(fingerprint)}); use another --out folder or restore the data"
            )

    # -- identity and config --------------------------------------------------------------------

    @property
    def kind(self) -> str:
        return self.stored["kind"]

    @property
    def hash(self) -> str:
        return self.stored["hash"]

    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    @property
    def config(self):
        """The run's config: a LotteryConfig for searches and controls, a RunConfig for training runs."""
        cls = RunConfig if self.kind == "train" else LotteryConfig  # range fine-tunings keep their source's
        return from_dict(cls, self.stored["config"])

    @property
    def data_fingerprint(self) -> dict:
        return self.stored.get("data", {})

    def update_stored(self, **fields: Any) -> None:
        self.stored.update(fields)
        write_json(self.config_path, self.stored)

    def label(self) -> str:
        config = self.stored["config"]
        if self.kind == "train":
            return f"dense training run [{self.root.name}]"
        prune = config.get("prune", {})
        if self.kind.startswith("control-"):
            source = Path(prune.get("control_of") or "?").name
            return f"{self.kind.split('-', 1)[1]} control of {source}"
        label = prune.get("strategy", "?")
        if label == "varying" and prune.get("order") == "reverse":
            label += " (reverse order)"
        if prune.get("one_shot"):
            label += " one-shot"
        return f"{label}, data seed {config.get('train', {}).get('seed_data', 0)} [{self.root.name}]"

    # -- files of the run -----------------------------------------------------------------------

    @property
    def network_path(self) -> Path:
        return self.root / "network.json"

    @property
    def modules_path(self) -> Path:
        return self.root / "modules.json"

    @property
    def rewind_path(self) -> Path:
        return self.root / "rewind" / "weights.safetensors"

    @property
    def summary_path(self) -> Path:
        return self.root / "summary.json"

    @property
    def commands_log_path(self) -> Path:
        return self.root / "commands.log"

    @property
    def branches_dir(self) -> Path:
        return self.root / "branches"

    def branch_path(self, kind: str, digest: str) -> Path:
        return self.branches_dir / f"{kind}-{digest}"

    def branches(self) -> list[Run]:
        return [Run.open(p) for p in sorted(self.branches_dir.glob("*")) if Run.is_run(p)]

    def cka_folder(self, other: Run, level: int) -> CkaFolder:
        return CkaFolder(self.root / "cka" / f"{other.root.name}-{level_name(level).replace('_', '')}")

    def lock(self) -> FolderLock:
        return FolderLock(self.root)

    def clean_leftovers(self) -> None:
        """Temporaries and half-written checkpoints that a killed process left behind."""
        for folder in (self.root, self.root / "rewind", *self.root.glob("level_*")):
            remove_temporaries(folder)
        for level in self.all_level_dirs():
            Checkpoints(level / "checkpoints").clean()

    def network_config(self) -> dict:
        return read_json(self.network_path, "network config", DAMAGED)

    @property
    def schedules_dir(self) -> Path:
        return self.root / "schedules"

    def schedule_dir(self, slug: str) -> Path:
        """Where a stage schedule of this run keeps its evaluations (``eval/`` inside)."""
        return self.schedules_dir / slug

    def range_path(self, level: int, low: int, high: int, start: str, digest: str) -> Path:
        """A level fine-tuned on timesteps low..high-1: a run of its own."""
        return self.root / "ranges" / f"{level_name(level)}-t{low}-{high}-{start}-{digest}"

    def frontier_folder(self, root: Path | None = None) -> FrontierFolder:
        return FrontierFolder(root or self.root / "frontier")

    @property
    def channel_groups_path(self) -> Path:
        """Channel tickets: which channels are removed together and every layer each one reaches."""
        return self.root / "channel_groups.json"

    def module_map_json(self) -> dict:
        return read_json(self.modules_path, "module map", DAMAGED)

    def layer_order(self) -> list[str]:
        """Prunable tensors, one per layer, in forward-execution order."""
        return [t for module in self.module_map_json()["modules"] for t in module["tensors"]]

    # -- levels ---------------------------------------------------------------------------------

    def level(self, index: int) -> Level:
        return Level(self, index)

    def all_level_dirs(self) -> list[Path]:
        return sorted(p for p in self.root.glob("level_*") if p.is_dir() and LEVEL_PATTERN.match(p.name))

    def finished_levels(self) -> list[int]:
        return sorted(
            int(LEVEL_PATTERN.match(p.name).group(1)) for p in self.all_level_dirs() if (p / "metrics.json").is_file()
        )

    def last_level(self) -> Level:
        levels = self.finished_levels()
        if not levels:
            raise UserError(f"{self.root} has no finished level yet; let its command finish level 0 first")
        return self.level(levels[-1])

    def pick_level(self, index: int | None) -> Level:
        """A finished level (the last one when ``index`` is None)."""
        if index is None:
            return self.last_level()
        return self.level(index).require_finished()

    def levels_arg(self, index: int | None, all_levels: bool) -> list[Level]:
        if all_levels:
            return [self.level(i) for i in self.finished_levels()]
        return [self.pick_level(index)]

    def log_command(self, argv: list[str]) -> None:
        """Append a command line to commands.log (provenance for reports)."""
        try:
            with open(self.commands_log_path, "a", encoding="utf-8") as handle:
                handle.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')}\nddpm-lottery {shlex.join(argv)}\n")
        except OSError:
            pass  # provenance is best effort; the results are already written

    def commands(self) -> str:
        return self.commands_log_path.read_text(encoding="utf-8") if self.commands_log_path.exists() else ""

    def write_summary(self, rows: list[dict]) -> None:
        write_json(
            self.summary_path, {"hash": self.hash, "non_default": self.stored.get("non_default", {}), "levels": rows}
        )


@functools.cache  # once per run and process: the note is for the person, the files are read either way
def _note_unverified(root: str) -> None:
    print(
        f"ddpm-lottery: note: {root} was made before run files were sealed; its files are read unverified",
        file=sys.stderr,
    )


__all__ = ["LAYOUT_VERSION", "Checkpoints", "CkaFolder", "Level", "Run", "SampleFolder", "level_name", "run_hash"]
