"""Seals (utils/seals.py, through the readers and writers of utils/files.py): every JSON, safetensors and npz
file of a run carries a digest of its content, its run and its place, checked on every read, so another run's
weights, another level's mask and an edited config are refused in one line naming the file; a run made before
seals still reads, with one note; and `flops` reads what is stored (issue 34, items 3, 4, 6 and 8)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_lottery.cli.main import main
from ddpm_lottery.runs.run import Run
from ddpm_lottery.utils.errors import UserError
from ddpm_lottery.utils.files import (
    copy_file,
    load_arrays,
    load_tensors,
    mark_tree,
    read_json,
    save_arrays,
    save_tensors,
    staged_folder,
    write_json,
)
from ddpm_lottery.utils.seals import SCOPE_MARKER, SEAL_KEY

SHIPPED_RUN = Path(__file__).resolve().parents[1] / "results" / "cpu-digits" / "runs" / "unified-seed0"


def _write_all(folder: Path) -> None:
    write_json(folder / "a" / "record.json", {"value": 1.5, "interval": [1.0, 2.0]})
    save_tensors(folder / "a" / "w.safetensors", {"w": torch.arange(6.0).view(2, 3), "h": torch.ones(2).half()})
    save_arrays(folder / "a" / "x.npz", images=np.arange(12, dtype=np.uint8).reshape(3, 4))


def _read_all(folder: Path) -> None:
    read_json(folder / "a" / "record.json")
    load_tensors(folder / "a" / "w.safetensors")
    load_arrays(folder / "a" / "x.npz")


def test_files_in_a_sealed_folder_carry_a_seal_that_readers_check_and_hide(tmp_path):
    mark_tree(tmp_path, "run-one")
    _write_all(tmp_path)
    assert SEAL_KEY in json.loads((tmp_path / "a" / "record.json").read_text())
    assert read_json(tmp_path / "a" / "record.json") == {"value": 1.5, "interval": [1.0, 2.0]}
    assert set(load_tensors(tmp_path / "a" / "w.safetensors")) == {"w", "h"}
    assert set(load_arrays(tmp_path / "a" / "x.npz")) == {"images"}


def test_an_edited_moved_or_stripped_file_is_refused_in_one_line(tmp_path):
    mark_tree(tmp_path, "run-one")
    _write_all(tmp_path)
    record = tmp_path / "a" / "record.json"
    edited = json.loads(record.read_text())
    edited["value"] = 0.01
    record.write_text(json.dumps(edited))
    with pytest.raises(UserError, match=rf"{record} does not match its seal.*; fix it") as caught:
        read_json(record, "evaluation", "fix it")
    assert "\n" not in str(caught.value)
    # the same bytes at another place of the same tree: another level
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "w.safetensors", tmp_path / "b" / "w.safetensors")
    with pytest.raises(UserError, match="does not match its seal"):
        load_tensors(tmp_path / "b" / "w.safetensors")
    # a file without its seal in a sealed folder
    (tmp_path / "a" / "plain.json").write_text(json.dumps({"value": 1.0}))
    with pytest.raises(UserError, match="carries no seal"):
        read_json(tmp_path / "a" / "plain.json")
    # the marker removed: sealed files are refused, not read unverified
    (tmp_path / SCOPE_MARKER).unlink()
    with pytest.raises(UserError, match="no folder above it holds its seal marker"):
        load_arrays(tmp_path / "a" / "x.npz")


def test_a_file_of_another_tree_is_refused_and_a_copy_is_sealed_anew(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    mark_tree(one, "run-one")
    mark_tree(two, "run-two")
    _write_all(one)
    (two / "a").mkdir()
    for name in ("record.json", "w.safetensors", "x.npz"):
        shutil.copy(one / "a" / name, two / "a" / name)
    for reader, name in ((read_json, "record.json"), (load_tensors, "w.safetensors"), (load_arrays, "x.npz")):
        with pytest.raises(UserError, match="does not match its seal"):
            reader(two / "a" / name)
        copy_file(one / "a" / name, two / "a" / name)  # checked at its source, sealed for its new place
    _read_all(two)


def test_a_staged_folder_seals_for_its_finished_place_and_unmarked_files_read_as_they_are(tmp_path):
    mark_tree(tmp_path / "run", "run-one")
    with staged_folder(tmp_path / "run" / "a") as staging:  # .a.partial/ until it is finished
        save_tensors(staging / "w.safetensors", {"w": torch.ones(2)})
    assert torch.equal(load_tensors(tmp_path / "run" / "a" / "w.safetensors")["w"], torch.ones(2))
    plain = tmp_path / "plain"
    _write_all(plain)
    assert SEAL_KEY not in json.loads((plain / "a" / "record.json").read_text())
    _read_all(plain)


# -- the attacks of issue 34, through the commands ------------------------------------------------


@pytest.fixture
def run_copy(tiny_ticket_run, tmp_path):
    return Path(shutil.copytree(tiny_ticket_run, tmp_path / "run"))


def _refused_in_one_line(capsys, args, path: Path, *words: str) -> str:
    assert main([str(a) for a in args]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0], err
    assert all(word in err[0] for word in words), err[0]
    return err[0]


def test_weights_copied_from_another_run_are_refused(run_copy, second_ticket_run, tmp_path, capsys):
    target = Run.open(run_copy).level(2).weights_path("ema")
    shutil.copy(Run.open(second_ticket_run).level(2).weights_path("ema"), target)
    line = _refused_in_one_line(capsys, ["export", run_copy, "--out", tmp_path / "out", "--level", 2], target, "seal")
    assert "re-run the command" in line
    assert not (tmp_path / "out").exists()
    sample = ["sample", run_copy, "--level", 2, "--steps", 2, "--num-samples", 2, "--out", tmp_path / "s"]
    _refused_in_one_line(capsys, [*sample, "--no-progress"], target, "does not match its seal")


def test_another_levels_mask_is_refused(run_copy, tmp_path, capsys):
    run = Run.open(run_copy)
    target = run.level(2).mask_path
    shutil.copy(run.level(1).mask_path, target)
    _refused_in_one_line(capsys, ["export", run_copy, "--out", tmp_path / "out", "--level", 2], target, "seal")
    run.level(2).costs_path.unlink()  # flops counts from the mask when nothing is stored
    _refused_in_one_line(capsys, ["flops", run_copy, "--level", 2], target, "does not match its seal")


def test_an_edited_setting_is_refused_in_a_sealed_and_in_an_old_run(run_copy, tmp_path, capsys):
    config = run_copy / "config.json"
    stored = json.loads(config.read_text())
    stored["config"]["diffusion"]["beta_end"] = 0.5
    config.write_text(json.dumps(stored, indent=2))
    sample = ["sample", run_copy, "--steps", 2, "--num-samples", 2, "--out", tmp_path / "s", "--no-progress"]
    _refused_in_one_line(capsys, sample, config, "does not match its seal")
    if not SHIPPED_RUN.is_dir():
        pytest.skip("no results/ folder in this checkout")
    old = Path(shutil.copytree(SHIPPED_RUN, tmp_path / "old"))  # made before seals: its hash is checked instead
    stored = json.loads((old / "config.json").read_text())
    stored["config"]["diffusion"]["beta_end"] = 0.5
    (old / "config.json").write_text(json.dumps(stored, indent=2))
    with pytest.raises(UserError, match=r"does not give its stored run hash \(diffusion.beta_end differs"):
        Run.open(old)


def test_a_run_made_before_seals_works_with_one_note_and_flops_reads_its_stored_costs(tmp_path, monkeypatch, capsys):
    """Item 4: `flops --level 3` on a shipped run (its pruned levels keep only sparse.safetensors); item 8: it
    writes nothing where the costs are stored, so a read-only run works."""
    if not SHIPPED_RUN.is_dir():
        pytest.skip("no results/ folder in this checkout")
    old = Path(shutil.copytree(SHIPPED_RUN, tmp_path / "old"))
    assert not (old / "level_03" / "ema.safetensors").exists()

    def no_writes(path):
        raise AssertionError(f"flops wrote {path}")

    monkeypatch.setattr("ddpm_lottery.utils.files.atomic_path", no_writes)
    assert main(["flops", str(old), "--level", "3"]) == 0
    captured = capsys.readouterr()
    notes = captured.err.strip().splitlines()
    assert len(notes) == 1 and str(old) in notes[0] and "unverified" in notes[0]
    stored = read_json(old / "level_03" / "costs.json")
    assert f"parameters {stored['surviving_parameters']:,} of {stored['dense_parameters']:,}" in captured.out
    assert main(["flops", str(old), "--level", "2"]) == 0
    assert capsys.readouterr().err == ""  # one note per run and process


def test_flops_writes_only_what_is_missing(run_copy, monkeypatch):
    from ddpm_lottery.lottery.costs import stored_costs

    level = Run.open(run_copy).level(2)
    sparse = level.sparse_path.read_bytes()
    level.costs_path.unlink()
    costs = stored_costs(level)  # recounted; the sparse export that is there is kept
    assert level.sparse_path.read_bytes() == sparse and read_json(level.costs_path) == costs
    monkeypatch.setattr("ddpm_lottery.utils.files.atomic_path", lambda path: pytest.fail(f"wrote {path}"))
    assert main(["flops", str(run_copy), "--all-levels"]) == 0


def test_a_mask_of_another_architecture_is_one_line_in_flops_and_compact(run_copy, capsys):
    """Item 6: the check export had, shared by every reader of a level's masks."""
    from diffusers import UNet2DModel

    from ddpm_lottery.lottery.networks import level_masks
    from ddpm_lottery.pruning.masks import save_masks

    run = Run.open(run_copy)
    level = run.level(2)
    other = UNet2DModel.from_config({**run.network_config(), "block_out_channels": [16, 16, 16]})
    shapes = dict(other.named_parameters())
    save_masks(level.mask_path, {n: torch.ones_like(shapes[n], dtype=torch.bool) for n in level_masks(level)})
    level.costs_path.unlink()
    for command in ("flops", "compact"):
        _refused_in_one_line(
            capsys, [command, run_copy, "--level", 2], level.mask_path, "does not fit the level's network"
        )
