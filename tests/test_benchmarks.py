"""The benchmark scripts still start: their imports and arguments follow the package (no timing is asserted)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = sorted(
    p for p in (Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py") if p.name != "common.py"
)


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
@pytest.mark.slow
def test_benchmark_starts(script):
    done = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120, cwd=script.parent.parent
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage:")


def test_every_benchmark_is_covered():
    assert {p.name for p in BENCHMARKS} >= {
        "evaluate.py",
        "pruning.py",
        "sampling.py",
        "train_step.py",
        "validate_measures.py",
    }


def test_level_speeds_reads_a_runs_records_against_its_dense_kernel_levels(tmp_path, capsys, monkeypatch):
    """The throughput ratio is the level's median img/s over the mean of the run's dense-kernel pruned
    levels' medians (level 0 is left out), and the FLOP limit comes from the level's costs."""
    import json

    monkeypatch.syspath_prepend(str(BENCHMARKS[0].parent))
    import level_speeds

    run = tmp_path / "runs" / "unified-seed0"
    for level, sparsity, kernels, speeds, reduction in (
        (0, 0.0, None, [50, 50, 50], 0.0),
        (1, 0.5, "dense", [90, 100, 400], 0.5),  # one window a neighbour slowed down or sped up: the median
        (2, 0.9, "sparse", [150, 10, 150], 0.9),
    ):
        folder = run / f"level_{level:02d}"
        folder.mkdir(parents=True)
        training = {"kernels": kernels} if kernels else {}
        metrics = {"level": level, "sparsity": sparsity, "training": training, "wall_time_s": 100.0}
        (folder / "metrics.json").write_text(json.dumps(metrics))
        (folder / "metrics.jsonl").write_text("".join(json.dumps({"images_per_s": s}) + "\n" for s in speeds))
        (folder / "costs.json").write_text(json.dumps({"reduction": reduction}))
    assert level_speeds.main([str(tmp_path)]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[2:]}
    assert "0" not in rows
    assert rows["1"][4:] == ["100.0", "1.00", "2.0"]
    assert rows["2"][2] == "sparse" and rows["2"][4:] == ["150.0", "1.50", "10.0"]
    assert level_speeds.main([str(tmp_path / "nothing")]) == 2


def test_token_linear_prints_one_row_per_layer_and_density(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS[0].parent))
    import token_linear

    assert token_linear.main(["--rows", "37", "--shapes", "20x24,24x8", "--densities", "0.25", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "threads" in out.splitlines()[0] and "benchmarks/token_linear.py --rows 37" in out
    table = [line for line in out.splitlines() if line.startswith("| 37 |")]
    assert [line.split("|")[2].strip() for line in table] == ["20 → 24", "24 → 8"]


def test_peers_prints_one_row_per_layer_and_says_why_a_missing_peer_is_left_out(capsys, monkeypatch):
    """Without SparseProp the table keeps ddpm-lottery's columns and one header line names the reason."""
    monkeypatch.syspath_prepend(str(BENCHMARKS[0].parent))
    import peers

    monkeypatch.setattr(peers, "load_peer", lambda build: (None, "SparseProp left out: not installed"))
    assert peers.main(["--layers", "linear", "--densities", "0.5", "--repeats", "1", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "# SparseProp left out: not installed" in out
    rows = [line for line in out.splitlines() if line.startswith("| Linear")]
    assert len(rows) == 4
    assert all(row.split("|")[4].strip() == "–" and row.split("|")[5].strip().endswith("×") for row in rows)


def test_layer_groups_prunes_exactly_one_group_to_its_sparsity(monkeypatch):
    """The sensitivity probe behind --layer-groups' default masks one group, each of its layers at the
    sparsity, and leaves every other weight as it was."""
    monkeypatch.syspath_prepend(str(BENCHMARKS[0].parent))
    import layer_groups

    from ddpm_lottery.config import ModelConfig
    from ddpm_lottery.models.families import family_of
    from ddpm_lottery.models.networks import build_model

    config = ModelConfig(preset="dit-small", num_layers=2, num_attention_heads=2, attention_head_dim=8)
    model = build_model(config, 1, seed=0)
    with torch.no_grad():  # adaLN-Zero starts its modulation at zero: give every weight a magnitude
        for parameter in model.parameters():
            parameter.normal_(generator=torch.Generator().manual_seed(1))
    pruned = layer_groups.magnitude_pruned(model, "adaln", 0.75)
    family = family_of(model)
    for (name, before), after in zip(model.named_modules(), pruned.modules()):
        if not family.is_prunable(before):
            continue
        zeros = int((after.weight == 0).sum())
        if family.layer_group(name) == "adaln":
            assert zeros == round(0.75 * before.weight.numel())
            kept = after.weight != 0
            assert before.weight[kept].abs().min() >= before.weight[~kept].abs().max()
        else:
            assert torch.equal(after.weight, before.weight)


def test_the_costliest_operators_are_ranked_by_their_self_time_a_step(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS[0].parent))
    import ticket_step

    big, small = torch.randn(256, 256), torch.randn(8, 8)

    def step():
        big @ big  # about 2,000 times the work of the small product
        small @ small

    ranked = ticket_step.costliest_operators(step, 2, steps=2)
    assert len(ranked) == 2 and ranked[0][1] >= ranked[1][1] > 0
    assert ranked[0][0] == "aten::mm"
