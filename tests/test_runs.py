"""The run model and safe writes: identity, locks, checkpoints that verify, leftovers, permissions."""

import errno
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from ddpm_lottery.config import RunConfig
from ddpm_lottery.lottery.networks import level_network
from ddpm_lottery.runs.checkpoints import Checkpoints
from ddpm_lottery.runs.run import Run
from ddpm_lottery.utils.errors import UserError
from ddpm_lottery.utils.files import FolderLock, load_tensors, read_json, save_tensors, truncate_jsonl, write_json

FINGERPRINT = {"dataset": "embedded", "split": "train", "count": 10, "digest": "aaaa"}


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


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_really_full_disk_is_one_line(tmp_path, monkeypatch):
    """A write that really fails with ENOSPC: the temporary file is a link to /dev/full."""
    import tempfile

    target = tmp_path / "file.json"
    target.write_text("old")

    def full_mkstemp(prefix="", suffix="", dir=None):
        path = os.path.join(dir, f"{prefix}full{suffix}")
        os.symlink("/dev/full", path)
        return os.open(os.devnull, os.O_RDONLY), path

    monkeypatch.setattr(tempfile, "mkstemp", full_mkstemp)
    with pytest.raises(UserError, match="the disk is full while writing .*file.json; free space") as info:
        write_json(target, {"good": False})
    assert "\n" not in str(info.value)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["file.json"]


def test_safetensors_on_a_full_disk_is_one_line(tmp_path, monkeypatch):
    """safetensors writes through its own temporary file and reports a failed write as its own error type,
    with the OS error in the text (the message below is the one a full tmpfs gave safetensors 0.8)."""
    from safetensors import SafetensorError

    target = tmp_path / "w.safetensors"
    save_tensors(target, {"a": torch.ones(3)})

    def full(*_args, **_kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr("ddpm_lottery.utils.files.save_file", full)
    with pytest.raises(UserError, match="the disk is full while writing .*w.safetensors; free space"):
        save_tensors(target, {"a": torch.zeros(3)})
    monkeypatch.undo()
    assert torch.equal(load_tensors(target)["a"], torch.ones(3)) and len(list(tmp_path.iterdir())) == 1


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


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644


def test_run_folder_refuses_foreign_or_different_content(tmp_path):
    config = RunConfig()
    run = Run.prepare(tmp_path / "run", config, "train", FINGERPRINT)
    stored = json.loads((run.root / "config.json").read_text())
    assert stored["kind"] == "train" and stored["data"] == FINGERPRINT and stored["layout"] == 2
    assert Run.prepare(run.root, config, "train", FINGERPRINT).hash == run.hash
    other = RunConfig()
    other.train.lr = 0.5
    with pytest.raises(UserError, match="holds another run .*train.lr"):
        Run.prepare(run.root, other, "train", FINGERPRINT)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a ddpm-lottery run folder"):
        Run.prepare(foreign, config, "train", FINGERPRINT)
    regular = tmp_path / "file"
    regular.write_text("x")
    with pytest.raises(UserError, match="regular file"):
        Run.prepare(regular, config, "train", FINGERPRINT)


def test_changed_data_or_changed_default_is_caught_and_named(tmp_path):
    config = RunConfig()
    run = Run.prepare(tmp_path / "run", config, "train", FINGERPRINT)
    with pytest.raises(UserError, match="training data .* changed"):
        Run.prepare(run.root, config, "train", {**FINGERPRINT, "digest": "bbbb", "count": 11})
    # a default that changed between versions: same hash, different stored value (written, and sealed, so)
    stored = read_json(run.root / "config.json")
    stored["config"]["train"]["ema_decay"] = 0.5
    write_json(run.root / "config.json", stored)
    with pytest.raises(UserError, match="train.ema_decay=0.5 there, 0.999 here"):
        Run.prepare(run.root, config, "train", FINGERPRINT)


def test_data_identity_enters_the_run_hash(tmp_path):
    config = RunConfig()
    a = Run.prepare(tmp_path / "a", config, "train", FINGERPRINT)
    b = Run.prepare(tmp_path / "b", config, "train", {**FINGERPRINT, "digest": "bbbb"})
    assert a.hash != b.hash


def test_old_layout_gets_a_one_line_migration_message(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"kind": "train", "hash": "x", "config": {}}))
    with pytest.raises(UserError, match="older ddpm-lottery .* re-run its command into a new --out"):
        Run.open(tmp_path)


def test_lock_refuses_a_second_process_and_names_it(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from ddpm_lottery.utils.files import FolderLock; lock = FolderLock(sys.argv[1]); "
                "lock.acquire(); print('locked', flush=True); time.sleep(30)"
            ),
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"in use by process {holder.pid}"):
            FolderLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    lock = FolderLock(tmp_path)  # a killed holder's lock does not block
    lock.acquire()
    lock.release()


def _save_states(folder, steps):
    store = Checkpoints(folder)
    for step in steps:
        store.save(step, {"w": torch.full((3,), float(step))}, {"note": step}, keep=5)
    return store


def test_checkpoints_fall_back_to_the_newest_that_verifies(tmp_path):
    store = _save_states(tmp_path, (2, 4, 6))
    (tmp_path / "step_00000006.safetensors").write_bytes(b"garbage")  # corrupt newest
    notes = []
    state, tensors = store.load_latest(log=notes.append)
    assert state["step"] == 4 and torch.equal(tensors["w"], torch.full((3,), 4.0))
    assert any("step_00000006" in n for n in notes)
    (tmp_path / "step_00000004.safetensors").unlink()  # deleted, as an error message advises
    store.clean()
    state, _ = store.load_latest(log=lambda *_: None)
    assert state["step"] == 2


def test_checkpoint_pointer_outside_the_run_or_malformed_is_refused(tmp_path):
    store = _save_states(tmp_path, (2,))
    for bad in ({"checkpoint": "../../other/checkpoints/step_00000002"}, [1, 2], {"checkpoint": 7}):
        store.pointer.write_text(json.dumps(bad))
        with pytest.raises(UserError, match="does not name a checkpoint of this folder") as info:
            store.load_latest()
        assert "\n" not in str(info.value)
    store.pointer.unlink()
    assert store.load_latest()[0]["step"] == 2


def test_leftovers_of_a_kill_are_cleaned(tmp_path):
    store = _save_states(tmp_path, (2,))
    (tmp_path / ".step_00000004.safetensors.abc.tmp").write_bytes(b"half")
    (tmp_path / "step_00000004.safetensors").write_bytes(b"orphan without its json")
    store.clean()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "latest.json",
        "step_00000002.json",
        "step_00000002.safetensors",
    ]


def test_truncate_jsonl_drops_lines_after_the_checkpoint_and_cut_lines(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text("\n".join(json.dumps({"step": s}) for s in (1, 2, 3, 4)) + '\n{"step": 5, "lo')
    truncate_jsonl(log, 3)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3]


def test_layout_literals_live_only_in_the_run_model():
    """No module but runs.py names the files of a run folder."""
    from pathlib import Path

    source = Path(__file__).resolve().parents[1] / "src" / "ddpm_lottery"
    literals = (
        '"metrics.json"',
        '"metrics.jsonl"',
        "level_{",
        '"mask.safetensors"',
        '"ema.safetensors"',
        '"weights.safetensors"',
        '"config.json"',
        '"network.json"',
        '"modules.json"',
        '"latest.json"',
        '"costs.json"',
        '"checkpoints"',
        '"rewind"',
        '"status.json"',
        '"summary.json"',
        '"grid.png"',
        '"samples.npz"',
        '"info.json"',
        '"cka.csv"',
        '"cka.json"',
        '"figure1.png"',
        '"branches"',
    )
    offenders = [
        f"{path.name}: {lit}"
        for path in source.glob("*.py")
        if path.name != "runs.py"
        for lit in literals
        if lit in path.read_text()
    ]
    assert offenders == []


def test_a_level_kept_as_its_sparse_export_still_gives_its_ema_weights(tiny_ticket_run, tmp_path):
    """A committed study keeps pruned levels as sparse exports only: EMA weights come back exactly,
    and asking for the raw weights (which only pruning the next level needs) is one clear error."""
    import shutil

    from ddpm_lottery.lottery.costs import level_costs

    copy = tmp_path / "run"
    shutil.copytree(tiny_ticket_run, copy)
    level = Run.open(copy).level(1)
    level_costs(level)
    ema = level.state("ema")
    level.weights_path("ema").unlink()
    level.weights_path("raw").unlink()
    rebuilt = level.state("ema")
    assert set(rebuilt) == set(ema)
    assert all(torch.equal(rebuilt[k], ema[k]) for k in ema)
    level_network(level, "ema")  # loads into the run's network
    with pytest.raises(UserError, match="no weights.safetensors .only its sparse export.*--weights ema.*retrain"):
        level.state("raw")
    # level 2 was pruned from level 1's weights: retraining level 1 alone would not fit it, and the error says so
    assert level.retrain_advice().endswith("and the later levels (2) and re-run the command to retrain them")
    assert Run.open(copy).level(2).retrain_advice().endswith("level_02 and re-run the command to retrain the level")
    assert level.has_weights("ema") and not level.has_weights("raw")


def test_a_sparse_export_without_its_shapes_is_one_line(tmp_path):
    from ddpm_lottery.runs.sparse_export import load_sparse

    save_tensors(tmp_path / "s.safetensors", {"values.w": torch.ones(2), "mask.w": torch.ones(1, dtype=torch.uint8)})
    with pytest.raises(UserError, match="lacks the shape or mask of w; re-export"):
        load_sparse(tmp_path / "s.safetensors")


def test_a_corrupt_cka_result_says_to_delete_its_folder(tmp_path):
    from ddpm_lottery.runs.outputs import CkaFolder

    folder = CkaFolder(tmp_path / "cka" / "level_01")
    folder.dir.mkdir(parents=True)
    folder.summary.write_text("garbage")
    with pytest.raises(UserError, match=rf"corrupt \(not valid JSON\); delete {re.escape(str(folder.dir))} and re-run"):
        folder.read_summary()
