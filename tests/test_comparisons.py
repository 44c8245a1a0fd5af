"""findings/comparisons.py and boundary_words.py: (g) a search against another study's, (h) conditioning."""

import pytest
from helpers import synthetic_study

from ddpm_lottery.findings.collect import collect
from ddpm_lottery.findings.comparisons import EVERY
from ddpm_lottery.findings.questions import findings
from ddpm_lottery.findings.render import markdown
from ddpm_lottery.measures.stats import t_interval

SPARSITIES = [0.0, 0.5, 0.75, 0.875, 0.9375, 0.96875]


def worse_from(level: int, seeds=(0, 1)) -> dict:
    """A measure equal to the dense model's up to ``level`` and worse from it, on every seed."""
    return {seed: [1.0 if index < level else 2.0 for index in range(len(SPARSITIES))] for seed in seeds}


def two_studies(tmp_path, against="unified", search="unified-2x"):
    """A DiT study whose `unified` holds to 93.75 % by the loss (worse at 96.9 %), beside a U-Net study whose
    `unified-2x` holds to 87.5 % (worse at 93.75 %); the DiT's domain FD, which the other study lacks, is
    worse from 87.5 %: if it counted, the DiT's joint boundary would fall below the U-Net's."""
    synthetic_study(
        tmp_path / "cpu-widths",
        {"unified-2x": {"sparsities": SPARSITIES, "weights": 1600, "values": {"loss": worse_from(4)}}},
    )
    return synthetic_study(
        tmp_path / "cpu-dit",
        {
            "unified": {
                "sparsities": SPARSITIES,
                "weights": 1280,
                "preset": "dit-small",
                "steps": 3000,
                "values": {"loss": worse_from(5), "domain": worse_from(3)},
            }
        },
        notes={"compare_with": {"study": "../cpu-widths", "search": search, "against": against}},
    )


def test_g_names_both_boundaries_their_survivors_and_the_direction(tmp_path):
    result = findings(collect(two_studies(tmp_path)))
    found = result["comparisons"]["reference"]
    assert found["measures"] == ["loss"] and found["only_here"] == ["domain"]
    assert set(found["by_measure"]) == {"loss", EVERY}
    for entry in found["by_measure"].values():
        dit, unet = entry["second"], entry["first"]
        assert (dit["not_worse"]["sparsity"], dit["first_worse"]["sparsity"]) == (0.9375, 0.96875)
        assert (unet["not_worse"]["sparsity"], unet["first_worse"]["sparsity"]) == (0.875, 0.9375)
        # surviving prunable weights: the DiT's 1,280 at 6.25 % and 3.125 %, the U-Net's 1,600 at 12.5 % and 6.25 %
        assert dit["surviving_bracket"] == [40, 80] and unet["surviving_bracket"] == [100, 200]
        assert (entry["sparsity"], entry["surviving"]) == ("higher", "lower")
    assert found["families"] == {"this": "dit", "reference": "unet"}
    assert found["budgets"]["this"]["steps"] == 3000 and found["budgets"]["reference"]["steps"] == 2500
    text = markdown(result)
    assert "**(g) unified against unified-2x of ../cpu-widths**" in text
    assert "differ in family (dit here, unet there) and in training budget (3,000 steps" in text
    assert "level 4 (93.75 %, 80 surviving) not worse on every seed" in text
    assert "unified-2x of ../cpu-widths (1,600 prunable weights): level 3 (87.50 %, 200 surviving)" in text
    assert "unified's boundary sparsity is **higher**, its surviving weight count **lower**" in text
    assert "Only this study measures domain FD" in text


def test_g_reads_the_other_study_without_writing_into_it(tmp_path):
    root = two_studies(tmp_path)
    other = tmp_path / "cpu-widths"
    before = {p: p.stat().st_mtime_ns for p in other.rglob("*")}
    findings(collect(root))
    assert {p: p.stat().st_mtime_ns for p in other.rglob("*")} == before


def test_g_names_a_missing_or_unknown_reference_in_one_line_and_the_other_findings_stand(tmp_path):
    root = two_studies(tmp_path, search="unified-3x")

    def not_compared(needle):
        result = findings(collect(root))
        reason = result["comparisons"]["reference"]["missing"]
        assert needle in reason and "\n" not in reason
        assert "not compared: " in markdown(result) and result["curves"]  # the other findings are still stated

    not_compared("has no runs of that search; its searches with runs: unified-2x")
    (tmp_path / "cpu-widths" / "study.json").unlink()
    not_compared("not a study folder")
    (tmp_path / "cpu-widths").rename(tmp_path / "elsewhere")
    not_compared("does not exist")


def test_g_waits_for_a_search_of_this_study_that_has_no_run_yet(tmp_path):
    result = findings(collect(two_studies(tmp_path, against="varying")))
    assert result["comparisons"]["reference"]["pending"]
    assert "**(g) varying against unified-2x of ../cpu-widths**: not compared yet" in markdown(result)


def conditioned_study(tmp_path):
    """`unified` holds to 93.75 % by the loss and to 75 % by the domain FD; `conditional` to 87.5 % by both,
    and by class accuracy only to 50 % (which (h) does not count: the unconditional search has none)."""
    errors = {0: [0.2, 0.2, 0.25, 0.3, 0.4, 0.6], 1: [0.22, 0.21, 0.24, 0.33, 0.45, 0.7]}
    return (
        synthetic_study(
            tmp_path / "dit",
            {
                "unified": {
                    "sparsities": SPARSITIES,
                    "weights": 1600,
                    "preset": "dit-small",
                    "values": {"loss": worse_from(5), "domain": worse_from(3)},
                },
                "conditional": {
                    "sparsities": SPARSITIES,
                    "weights": 1700,
                    "preset": "dit-small",
                    "conditional": True,
                    "values": {"loss": worse_from(4), "domain": worse_from(4), "class-accuracy": errors},
                },
            },
        ),
        errors,
    )


def test_h_compares_the_conditional_boundary_with_the_unconditional_one_by_each_measure(tmp_path):
    root, _ = conditioned_study(tmp_path)
    result = findings(collect(root))
    (found,) = result["comparisons"]["conditioning"]
    assert (found["conditional"], found["unconditional"]) == ("conditional", "unified")
    assert sorted(found["measures"]) == ["domain", "loss"]
    by = found["by_measure"]
    assert by["loss"]["sparsity"] == "lower" and by["loss"]["second"]["not_worse"]["sparsity"] == 0.875
    assert by["domain"]["sparsity"] == "higher" and by["domain"]["first"]["first_worse"]["sparsity"] == 0.875
    # together: unified is worse from 87.5 % by the domain FD, conditional from 93.75 % by both
    assert by[EVERY]["second"]["first_worse"]["sparsity"] == 0.9375 and by[EVERY]["sparsity"] == "higher"
    assert found["accuracy_boundary"]["first_worse"]["sparsity"] == 0.75
    # a conditional network beside an unconditional one is no change of width for (e)
    assert result["scale"]["widths"] == []
    text = markdown(result)
    assert "**(h) Does conditioning move the boundary?** conditional (class-conditional) against unified" in text
    assert "with conditioning the boundary's sparsity is **lower**" in text


def test_h_tables_the_class_accuracy_from_the_stored_error_rates(tmp_path):
    root, errors = conditioned_study(tmp_path)
    (found,) = findings(collect(root))["comparisons"]["conditioning"]
    assert [row["level"] for row in found["accuracy"]] == list(range(len(SPARSITIES)))
    assert found["chance"] == pytest.approx(0.1)
    for row in found["accuracy"]:
        mean, low, high = t_interval([errors[0][row["level"]], errors[1][row["level"]]], 0.95)
        assert row["accuracy"] == pytest.approx(1 - mean)
        assert row["interval"] == pytest.approx([1 - high, 1 - low])
        assert row["sparsity"] == SPARSITIES[row["level"]] and row["seeds"] == 2
    level_three = found["accuracy"][3]["against_dense"]
    gaps = [errors[seed][0] - errors[seed][3] for seed in (0, 1)]  # dense − level: the accuracy's difference
    assert level_three["difference"] == pytest.approx(sum(gaps) / 2)
    assert level_three["verdict"] == "less accurate"
    text = markdown(findings(collect(root)))
    assert f"| 3 | 87.50 % | {100 * found['accuracy'][3]['accuracy']:.1f} % [" in text
    assert "by chance, 10 % with these 10 classes" in text


def test_a_study_asking_neither_says_nothing_of_them(tmp_path):
    root = synthetic_study(
        tmp_path / "plain", {"unified": {"sparsities": SPARSITIES, "weights": 1600, "values": {"loss": worse_from(4)}}}
    )
    result = findings(collect(root))
    assert result["comparisons"] == {"reference": None, "conditioning": []}
    assert "(g)" not in markdown(result) and "(h)" not in markdown(result)
