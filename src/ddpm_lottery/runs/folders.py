"""The run model: the one place that knows how a run folder is laid out.

A run is a folder readable without the code.  A training run is a run with level 0 only; a
ticket search adds a level per pruning round; a control (random re-init, random mask) is a run
of its own under its ticket run's ``branches/``::

    RUN/config.json              kind, layout version, identity (run hash, data fingerprint),
                                 the non-default settings and the full config
    RUN/network.json             the diffusers UNet2DModel config (rebuilds every level's network)
    RUN/modules.json             the module map: prunable tensors by block, forward-execution order
    RUN/rewind/weights.safetensors   theta_tau, the weights every pruned level rewinds to
    RUN/summary.json             one row per finished level (sparsity, loss, wall time)
    RUN/commands.log             the commands run in this folder
    RUN/level_XX/                one level (XX = 00 is the dense network):
        mask.safetensors         bit-packed masks, 1 bit per prunable weight
        schedule.json            the ratio each unit planned and the count it removed (pruned levels)
        weights.safetensors      trained weights;  ema.safetensors: their EMA (what sampling uses)
        metrics.jsonl            step, loss, learning rate, images/s
        metrics.json             sparsities, per-module table, training summary; written last: its
                                 presence marks the level finished
        samples.png              a small DDIM grid (a visual check, not a metric)
        checkpoints/             step_XXXXXXXX.safetensors + .json (with the file's digest), while
                                 the level trains
        eval/samples-<sampling>.npz   the uint8 images one sampling protocol generated (arr_0)
        eval/.samples-<sampling>.parts/   while they are drawn: each finished batch, so a killed
                                 evaluation resumes at the batch it was drawing (same images)
        eval/<measure>-<protocol>.json   one measure (inception, domain, loss): value, interval,
                                 bootstrap resamples and everything that made them
        eval/loss-<protocol>.npz the held-out loss of every image and timestep band
        costs.json               FLOPs, parameters, storage;  sparse.safetensors: the sparse export
        channels.safetensors     channel tickets: the kept channels of every channel group
        compact.safetensors      channel tickets (and `ddpm-lottery compact`): the smaller network, EMA
                                 weights;  compact.json: its layer shapes
    RUN/channel_groups.json      channel tickets: each group's layers and the layer index of each channel
    RUN/schedules/<schedule>/eval/   the evaluations of a stage schedule
    RUN/ranges/<level>-t<LOW>-<HIGH>-<start>-<hash>/   a level fine-tuned on one timestep range (a run)
    RUN/frontier/                frontier.md, frontier.png, frontier.json
    RUN/model_index.json, RUN/unet/, RUN/scheduler/   training runs: a DDPMPipeline view of level 0 (EMA
                                 weights, linked), so DDPMPipeline.from_pretrained(RUN) loads the run
    RUN/branches/<control>-<hash>/   controls, laid out as runs
    RUN/cka/<other>-levelXX/     CKA between this run and another: cka.csv, cka.json, figure1.png

Every write is atomic (see :mod:`files`); a folder is used by one process at a time (``RUN/.lock``).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ddpm_lottery.config.settings import LotteryConfig, RunConfig, config_hash, from_dict, non_default, to_dict
from ddpm_lottery.utils.errors import UserError
from ddpm_lottery.utils.files import (
    FolderLock, copy_file, file_digest, load_tensors, make_dirs, read_json, read_jsonl, remove_temporaries, save_tensors,
    write_json,
)

LAYOUT_VERSION = 2
KINDS = ("train", "lottery", "control-reinit", "control-random", "control-refill", "range")
LEVEL_PATTERN = re.compile(r"^level_(\d{2,})$")
CHECKPOINT_PATTERN = re.compile(r"^step_(\d{8})$")


def level_name(index: int) -> str:
    return f"level_{index:02d}"


# ----------------------------------------------------------------------------------------------
# Checkpoints


class Checkpoints:
    """Resumable states of one level: ``step_XXXXXXXX.safetensors`` + ``.json`` and ``latest.json``.

    Each state's JSON carries the digest of its tensors file and is written after it, so a state
    whose JSON exists and whose digest verifies is complete.  Loading falls back to the newest
    state that verifies, so a corrupt or deleted newest checkpoint costs only the steps since the
    one before.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    @property
    def pointer(self) -> Path:
        return self.folder / "latest.json"

    def exists(self) -> bool:
        return self.folder.is_dir() and any(self.folder.glob("step_*.json"))

    def save(self, step: int, tensors: dict[str, torch.Tensor], state: dict, keep: int = 2) -> None:
        name = f"step_{step:08d}"
        tensor_path = self.folder / f"{name}.safetensors"
        save_tensors(tensor_path, tensors)
        write_json(self.folder / f"{name}.json", {**state, "step": step, "digest": file_digest(tensor_path)})
        write_json(self.pointer, {"checkpoint": name, "step": step})
        for old in self._states()[keep:]:
            self._remove(old)

    def _states(self) -> list[str]:
        """Checkpoint names with a JSON state, newest first."""
        if not self.folder.is_dir():
            return []
        names = [p.stem for p in self.folder.glob("step_*.json") if CHECKPOINT_PATTERN.match(p.stem)]
        return sorted(names, reverse=True)

    def _remove(self, name: str) -> None:
        (self.folder / f"{name}.json").unlink(missing_ok=True)
        (self.folder / f"{name}.safetensors").unlink(missing_ok=True)

    def check_pointer(self) -> None:
        """``latest.json`` must name a checkpoint of this folder; anything else is refused."""
        if not self.pointer.exists():
            return
        data = read_json(self.pointer, "checkpoint pointer", f"delete {self.pointer} to resume from the newest "
                                                              "valid checkpoint")
        name = data.get("checkpoint") if isinstance(data, dict) else None
        if not isinstance(name, str) or not CHECKPOINT_PATTERN.match(name):
            raise UserError(f"checkpoint pointer {self.pointer} does not name a checkpoint of this folder "
                            f"({json.dumps(data)[:60]}); delete it to resume from the newest valid checkpoint")

    def clean(self) -> None:
        """Remove what a killed writer left: temporaries, tensors without their state, states without tensors."""
        if not self.folder.is_dir():
            return
        remove_temporaries(self.folder)
        states = set(self._states())
        for path in self.folder.glob("step_*.safetensors"):
            if path.stem not in states:
                path.unlink(missing_ok=True)
        for name in states:
            if not (self.folder / f"{name}.safetensors").exists():
                (self.folder / f"{name}.json").unlink(missing_ok=True)

    def load_latest(self, log=print) -> tuple[dict, dict[str, torch.Tensor]] | None:
        """The newest checkpoint that verifies, as (state, tensors); None if there is none."""
        self.check_pointer()
        for name in self._states():
            try:
                state = read_json(self.folder / f"{name}.json", "checkpoint state")
                tensor_path = self.folder / f"{name}.safetensors"
                if not isinstance(state, dict) or state.get("digest") != file_digest(tensor_path):
                    raise UserError(f"checkpoint {tensor_path} does not match its recorded digest")
                return state, load_tensors(tensor_path, "checkpoint")
            except (UserError, OSError) as exc:
                log(f"skipping checkpoint {self.folder / name}: {exc}; falling back to an earlier one")
        return None

    def remove_all(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Output folders of single commands (also usable at a user's --out)


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
        return read_json(self.summary, "CKA result", f"delete {self.dir} and re-run the command that writes it "
                                                     "(`ddpm-lottery study` or `ddpm-lottery cka`)")

    @property
    def figure(self) -> Path:
        return self.dir / "figure1.png"


# ----------------------------------------------------------------------------------------------
# Levels


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


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


@dataclass(frozen=True)
class Level:
    """One level of a run: its folder and the files in it."""

    run: "Run"
    index: int

    @property
    def dir(self) -> Path:
        return self.run.root / level_name(self.index)

    @property
    def mask_path(self) -> Path:
        return self.dir / "mask.safetensors"

    @property
    def schedule_path(self) -> Path:
        return self.dir / "schedule.json"

    @property
    def channels_path(self) -> Path:
        """Channel tickets: the kept channels of every channel group (mask.safetensors is their weight view)."""
        return self.dir / "channels.safetensors"

    @property
    def compact_path(self) -> Path:
        """Channel tickets: the physically smaller network (EMA weights), described by compact.json beside it."""
        return self.dir / "compact.safetensors"

    @property
    def compact_spec_path(self) -> Path:
        return self.dir / "compact.json"

    def weights_path(self, which: str = "raw") -> Path:
        if which not in ("raw", "ema"):
            raise UserError(f"weights must be raw or ema, got {which!r}")
        return self.dir / ("ema.safetensors" if which == "ema" else "weights.safetensors")

    @property
    def metrics_path(self) -> Path:
        return self.dir / "metrics.json"

    @property
    def log_path(self) -> Path:
        return self.dir / "metrics.jsonl"

    @property
    def grid_path(self) -> Path:
        return self.dir / "samples.png"

    @property
    def denoising_path(self) -> Path:
        return self.dir / "denoising.npz"

    def save_denoising(self, snapshots: torch.Tensor, timesteps: list[int], how: str) -> None:
        """x_t of one image at a few steps of its denoising (uint8), for the report's Figure 3."""
        import numpy as np

        from ddpm_lottery.utils.files import atomic_path

        with atomic_path(self.denoising_path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, snapshots=snapshots.numpy(), timesteps=np.array(timesteps),
                                    how=np.array(how))

    def denoising(self) -> tuple[torch.Tensor, list[int], str] | None:
        import numpy as np

        if not self.denoising_path.exists():
            return None
        with np.load(self.denoising_path, allow_pickle=False) as data:
            return torch.from_numpy(data["snapshots"]), [int(t) for t in data["timesteps"]], str(data["how"])

    @property
    def checkpoints(self) -> Checkpoints:
        return Checkpoints(self.dir / "checkpoints")

    @property
    def eval_dir(self) -> Path:
        return self.dir / "eval"

    @property
    def costs_path(self) -> Path:
        return self.dir / "costs.json"

    @property
    def sparse_path(self) -> Path:
        return self.dir / "sparse.safetensors"

    def samples_folder(self, name: str) -> SampleFolder:
        return SampleFolder(self.dir / "samples" / name)

    @property
    def finished(self) -> bool:
        return self.metrics_path.is_file()

    def label(self) -> str:
        return f"{self.run.root} level {self.index}"

    def record_fields(self) -> dict:
        """What names this level in a measurement record."""
        return {"level": self.index}

    def require_finished(self) -> "Level":
        if not self.finished:
            done = self.run.finished_levels()
            raise UserError(f"{self.run.root} has no finished level {self.index} (finished: "
                            f"{', '.join(map(str, done)) or 'none'}); pick one of those or let the run finish it")
        return self

    def metrics(self) -> dict:
        return read_json(self.metrics_path, "level metrics", f"delete {self.dir} and re-run the command to recompute "
                                                             "the level")

    def training_log(self) -> list[dict]:
        return read_jsonl(self.log_path)

    def masks(self):
        from ddpm_lottery.pruning.masks import load_masks

        return load_masks(self.mask_path, fix=f"delete {self.dir} and re-run the command to recompute the level")

    def state(self, which: str = "ema") -> dict[str, torch.Tensor]:
        """The level's weights. A level whose dense-format files were left out (a study committed to
        git keeps pruned levels as their sparse export, a fraction of the size) still gives its EMA
        weights, rebuilt exactly from that export; its raw weights are gone with the file."""
        self.require_finished()
        path = self.weights_path(which)
        if not path.exists() and self._ema_from_sparse(which):
            from ddpm_lottery.pruning.costs import load_sparse

            return load_sparse(self.sparse_path)
        if not path.exists() and self.metrics_path.is_file():
            if self.sparse_path.is_file():  # its EMA weights are here: say so before suggesting a retrain
                raise UserError(f"{self.label()} has no {path.name} (only its sparse export of the EMA weights is "
                                f"here); use the EMA weights where the command offers them (--weights ema), or "
                                f"{self.retrain_advice()}")
            raise UserError(f"{self.label()} has no {path.name}; the {which} weights are needed here, so "
                            f"{self.retrain_advice()}")
        return load_tensors(path, "level weights", f"delete {self.dir} and re-run the command to recompute the level")

    def _ema_from_sparse(self, which: str) -> bool:
        return which == "ema" and self.sparse_path.is_file() and (self.costs() or {}).get("weights") == "ema"

    def has_weights(self, which: str = "ema") -> bool:
        """Can :meth:`state` give these weights (from their file, or the EMA ones from the sparse export)?"""
        return self.weights_path(which).exists() or self._ema_from_sparse(which)

    def retrain_advice(self) -> str:
        """How to get a finished level's weights back: retrain it, and the levels pruned from it."""
        later = [i for i in self.run.finished_levels() if i > self.index]
        if not later:
            return f"delete {self.dir} and re-run the command to retrain the level"
        # the later levels were pruned from this one's weights: a retrained level alone would not fit them
        return (f"delete {self.dir} and the later levels ({', '.join(map(str, later))}) and re-run the command to "
                "retrain them")

    def network(self, which: str = "ema"):
        """The level's network with its weights loaded (a diffusers UNet2DModel on the CPU, eval mode).

        A channel ticket's network normalises over its surviving channels only, exactly as it trained
        (and as its compacted network computes)."""
        model = self.run.build_network()
        state = self.state(which)
        if set(dict(model.named_parameters())) - set(state):
            raise UserError(f"the weights of {self.label()} do not match its network; delete {self.dir} and re-run "
                            "the command to recompute the level")
        model.load_state_dict(state, strict=False)
        if self.channels_path.exists():
            from ddpm_lottery.pruning.channels.groups import install_kept_norms, load_channel_masks

            groups = self.run.channel_groups(model)
            install_kept_norms(model, groups, load_channel_masks(self.channels_path, groups))
        return model.eval()

    def channel_masks(self):
        from ddpm_lottery.pruning.channels.groups import load_channel_masks

        return load_channel_masks(self.channels_path) if self.channels_path.exists() else None

    def compact_network(self):
        """The compacted network of a channel ticket (EMA weights), rebuilt without its masks."""
        from ddpm_lottery.pruning.channels.groups import load_compact

        if not self.compact_path.exists():
            raise UserError(f"{self.label()} has no compacted network (only channel tickets have one; "
                            "`ddpm-lottery compact` writes it)")
        return load_compact(self.compact_spec_path, self.compact_path)

    # -- measurements stored beside the level ---------------------------------------------------

    def evaluation_path(self, key: str) -> Path:
        return self.eval_dir / f"{key}.json"

    def evaluation_array_path(self, key: str) -> Path:
        """Per-image values behind a record (the held-out loss of every image and band)."""
        return self.eval_dir / f"{key}.npz"

    def samples_path(self, sampling_key: str) -> Path:
        """The images one sampling protocol generated, shared by every measure of those images."""
        return self.eval_dir / f"{sampling_key}.npz"

    def evaluations(self) -> list[dict]:
        if not self.eval_dir.is_dir():
            return []
        records = []
        for path in sorted(self.eval_dir.glob("*.json")):
            record = read_json(path, "evaluation", f"delete {path} and evaluate again")
            record.setdefault("key", path.stem)
            records.append(record)
        return records

    def costs(self) -> dict | None:
        return read_json(self.costs_path, "costs") if self.costs_path.exists() else None


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


# ----------------------------------------------------------------------------------------------
# Runs


def hashed_keys(config) -> list[str]:
    """``section.field`` of every setting that is part of a run's identity."""
    import dataclasses

    keys = []
    for outer in dataclasses.fields(config):
        section = getattr(config, outer.name)
        if dataclasses.is_dataclass(section):
            keys += [f"{outer.name}.{f.name}" for f in dataclasses.fields(section) if f.metadata.get("hashed", True)]
        elif outer.metadata.get("hashed", True):
            keys.append(outer.name)
    return keys


def data_identity(fingerprint: dict) -> str:
    return str(fingerprint.get("digest", ""))


def run_hash(config, fingerprint: dict | None) -> str:
    """The run's identity: its result-affecting settings and the digest of its training images."""
    payload = json.dumps({"settings": non_default(config), "data": data_identity(fingerprint or {})},
                         sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


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
    def open(cls, path: str | Path) -> "Run":
        path = Path(path)
        config_path = path / "config.json"
        if not config_path.is_file():
            raise UserError(f"{path} is not a run folder (no config.json); pass the --out folder of train or "
                            "find-ticket")
        stored = read_json(config_path, "run config", "the run folder is damaged; re-run its command into a new "
                                                      "--out folder")
        if isinstance(stored, dict) and stored.get("layout") == LAYOUT_VERSION and stored.get("kind") not in KINDS:
            raise UserError(f"{path} is a {stored.get('kind')!r} run, which this version of ddpm-lottery does not know "
                            f"({', '.join(KINDS)}); open it with the version that wrote it")
        if not isinstance(stored, dict) or stored.get("layout") != LAYOUT_VERSION or stored.get("kind") not in KINDS:
            raise UserError(f"{path} was written by an older ddpm-lottery (run layout {stored.get('layout', 1) if isinstance(stored, dict) else '?'}, "
                            f"this version reads layout {LAYOUT_VERSION}); re-run its command into a new --out folder")
        return cls(path, stored)

    @classmethod
    def prepare(cls, path: str | Path, config, kind: str, fingerprint: dict, *, extra: dict | None = None,
                log=print) -> "Run":
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
        stored = {"layout": LAYOUT_VERSION, "kind": kind, "hash": digest, "config_hash": config_hash(config),
                  "data": fingerprint, "non_default": non_default(config), "config": to_dict(config), **(extra or {})}
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
            raise UserError(f"{self.root} holds another run ({'; '.join(differences[:3])}"
                            f"{' …' if len(differences) > 3 else ''}); use another --out folder or delete that one")
        stored_data = self.stored.get("data", {})
        if data_identity(stored_data) != data_identity(fingerprint):
            raise UserError(
                f"the training data of {self.root} changed: it was {stored_data.get('count')} {stored_data.get('dataset')} "
                f"images from {stored_data.get('source')} (digest {data_identity(stored_data)}), now "
                f"{fingerprint.get('count')} images from {fingerprint.get('source')} (digest "
                f"{data_identity(fingerprint)}); use another --out folder or restore the data")

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

    def branches(self) -> list["Run"]:
        return [Run.open(p) for p in sorted(self.branches_dir.glob("*")) if Run.is_run(p)]

    def cka_folder(self, other: "Run", level: int) -> CkaFolder:
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
        return read_json(self.network_path, "network config", "the run folder is damaged; re-run its command into "
                                                              "a new --out folder")

    def build_network(self, seed: int | None = None):
        """The run's network, freshly initialised (with ``seed``: the initial weights of --seed-init ``seed``)."""
        import contextlib

        from diffusers import UNet2DModel

        from ddpm_lottery.models.networks import seeded

        with seeded(seed) if seed is not None else contextlib.nullcontext():
            return UNet2DModel.from_config(self.network_config())

    def write_pipeline_view(self) -> Path:
        """model_index.json, unet/ and scheduler/ beside the levels: diffusers loads the run's dense EMA model.

        The weights are a link to level 0's EMA file (a copy where links are not possible), so the view
        costs no space and cannot disagree with the level.
        """
        import os

        from ddpm_lottery.models.diffusion import noise_scheduler

        level = self.level(0).require_finished()
        unet_dir = make_dirs(self.root / "unet")
        write_json(unet_dir / "config.json", {"_class_name": "UNet2DModel", **self.network_config()})
        weights = unet_dir / "diffusion_pytorch_model.safetensors"
        if weights.is_symlink() or weights.exists():
            weights.unlink()
        try:
            os.symlink(os.path.relpath(level.weights_path("ema"), unet_dir), weights)
        except OSError:  # a file system without links
            copy_file(level.weights_path("ema"), weights)
        noise_scheduler(self.config.diffusion).save_config(self.root / "scheduler")
        write_json(self.root / "model_index.json", {"_class_name": "DDPMPipeline", "_diffusers_version": _diffusers_version(),
                                                    "unet": ["diffusers", "UNet2DModel"],
                                                    "scheduler": ["diffusers", "DDPMScheduler"]})
        return self.root

    @property
    def schedules_dir(self) -> Path:
        return self.root / "schedules"

    def schedule_dir(self, slug: str) -> Path:
        """Where a stage schedule of this run keeps its evaluations (``eval/`` inside)."""
        return self.schedules_dir / slug

    def range_path(self, level: int, low: int, high: int, start: str, digest: str) -> Path:
        """A level fine-tuned on timesteps low..high-1: a run of its own."""
        return self.root / "ranges" / f"{level_name(level)}-t{low}-{high}-{start}-{digest}"

    def frontier_folder(self, root: Path | None = None) -> "FrontierFolder":
        return FrontierFolder(root or self.root / "frontier")

    @property
    def channel_groups_path(self) -> Path:
        """Channel tickets: which channels are removed together and every layer each one reaches."""
        return self.root / "channel_groups.json"

    def channel_groups(self, model=None):
        """The channel groups a channel ticket of this run prunes (stored with the run; traced if missing)."""
        from ddpm_lottery.pruning.channels.groups import channel_groups, load_groups

        if self.channel_groups_path.exists():
            return load_groups(self.channel_groups_path)
        prune = getattr(self.config, "prune", None)
        return channel_groups(model if model is not None else self.build_network(),
                              prune.include if prune else (), prune.exclude if prune else (),
                              prune.channel_scope if prune else "all")

    def module_map_json(self) -> dict:
        return read_json(self.modules_path, "module map")

    def layer_order(self) -> list[str]:
        """Prunable tensors, one per layer, in forward-execution order."""
        return [t for module in self.module_map_json()["modules"] for t in module["tensors"]]

    # -- levels ---------------------------------------------------------------------------------

    def level(self, index: int) -> Level:
        return Level(self, index)

    def all_level_dirs(self) -> list[Path]:
        return sorted(p for p in self.root.glob("level_*") if p.is_dir() and LEVEL_PATTERN.match(p.name))

    def finished_levels(self) -> list[int]:
        return sorted(int(LEVEL_PATTERN.match(p.name).group(1)) for p in self.all_level_dirs()
                      if (p / "metrics.json").is_file())

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
        import shlex
        import time

        try:
            with open(self.commands_log_path, "a", encoding="utf-8") as handle:
                handle.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')}\nddpm-lottery {shlex.join(argv)}\n")
        except OSError:
            pass  # provenance is best effort; the results are already written

    def commands(self) -> str:
        return self.commands_log_path.read_text(encoding="utf-8") if self.commands_log_path.exists() else ""

    def write_summary(self, rows: list[dict]) -> None:
        write_json(self.summary_path, {"hash": self.hash, "non_default": self.stored.get("non_default", {}),
                                       "levels": rows})


__all__ = ["Run", "Level", "Checkpoints", "SampleFolder", "CkaFolder", "run_hash", "level_name", "LAYOUT_VERSION"]
