"""Run folders and safe writes: a failed write never damages the file it was replacing."""

import errno
import json
import os

import pytest
import torch

from ddpm_lottery.config import RunConfig
from ddpm_lottery.errors import UserError
from ddpm_lottery.runs import load_tensors, prepare_run_dir, save_tensors, truncate_jsonl, write_json


def test_full_disk_keeps_the_old_file_and_says_so(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    write_json(target, {"good": True})

    def no_space(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(UserError, match="disk is full") as info:
        write_json(target, {"good": False})
    assert "\n" not in str(info.value)
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"good": True}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary file left behind


def test_interrupted_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "w.safetensors"
    save_tensors(target, {"a": torch.ones(3)})

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_tensors(target, {"a": torch.zeros(3)})
    monkeypatch.undo()
    assert torch.equal(load_tensors(target)["a"], torch.ones(3))
    assert len(list(tmp_path.iterdir())) == 1


def test_run_folder_refuses_foreign_or_different_content(tmp_path):
    config = RunConfig()
    run, existed = prepare_run_dir(tmp_path / "run", config, "train")
    assert not existed and json.loads((run / "config.json").read_text())["kind"] == "train"
    assert prepare_run_dir(run, config, "train") == (run, True)
    other = RunConfig()
    other.train.lr = 0.5
    with pytest.raises(UserError, match="different train"):
        prepare_run_dir(run, other, "train")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a ddpm-lottery run folder"):
        prepare_run_dir(foreign, config, "train")


def test_truncate_jsonl_drops_lines_after_the_checkpoint_and_cut_lines(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text("\n".join(json.dumps({"step": s}) for s in (1, 2, 3, 4)) + '\n{"step": 5, "lo')
    truncate_jsonl(log, 3)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3]
