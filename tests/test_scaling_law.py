"""findings/scaling_law.py: ψ, k and the projected boundary from the law, and "not determined" where the
curves cannot fix them."""

import math

import pytest
from test_law import synthetic

from ddpm_lottery.findings.law import JOINT, law_of
from ddpm_lottery.findings.scaling_law import law_blocks

LABELS = {"loss": "held-out loss"}
TARGET = 64 * 1000  # w = 8 against the narrowest network's 1000 weights


def weights_of(widths):
    return {n: round(1000 * w**2) for n, w in enumerate(widths)}


def text_of(law):
    blocks = law_blocks([{"networks": [["a"], ["b"]], "measures": {"loss": law}}], LABELS, ("loss",))
    return " ".join(str(block[1:]) for block in blocks)


def true_boundary(width, delta, e_np=None, e_up=1.0, g=2.0, p=0.05, psi=1.0):
    """The sparsity where the joint form is (1 + δ) times its dense plateau, solved by hand."""
    e_np = e_np or 0.1 / width**0.3
    ratio = (1 + delta) ** (2 / g)
    a = p * (e_up / e_np) ** (1 / g)
    return 1 - math.sqrt((a * a - ratio * p * p) / (ratio - 1)) / width**psi


def test_three_widths_determine_psi_and_the_projection_within_their_intervals():
    widths = (1.0, 2.0, 4.0)
    curves = synthetic(widths, seeds=3, psi=1.0, densities=[0.7**k for k in range(13)])
    law = law_of(curves, weights_of(widths), TARGET, delta=0.1, rounds=30)
    assert law["determined"] and law["chosen"] == JOINT
    low, high = law["psi_interval"]
    assert low <= 1.0 <= high and law["psi"] == pytest.approx(1.0, abs=0.15)
    assert law["k"] == pytest.approx(1 - law["psi"] / 2)
    assert law["k_interval"] == pytest.approx([1 - high / 2, 1 - low / 2])
    # every boundary where the constants put it: the threshold is (1 + δ) times the *measured* dense error
    # (its seed noise moves it along the curve's shallow start), the target taking the widest network's ratio
    for network in law["networks"]:
        rise = 1.1 * network["points"][0][1] / (0.1 / network["width"] ** 0.3) - 1
        low, high = network["fitted_interval"]
        assert low <= true_boundary(network["width"], rise) <= high
        assert network["fitted"] == pytest.approx(true_boundary(network["width"], rise), abs=0.02)
    target = law["target"]
    assert target["width"] == pytest.approx(8.0)
    assert target["interval"][0] <= target["sparsity"] <= target["interval"][1]
    # conditional on the target's dense error being the widest network's (its own is unknown)
    assert target["interval"][0] <= true_boundary(8.0, rise, e_np=0.1 / 4**0.3) <= target["interval"][1]
    text = text_of(law)
    assert "ψ = 1.0" in text and "A projection, not a measurement" in text and "not determined" not in text
    # ψ near 1: k = 1 − ψ/2 near 0.5, strictly between a constant count and growth like W
    assert "grow **sublinearly**" in text


@pytest.mark.parametrize(
    "k_interval,says",
    [
        ((0.3, 0.7), "grow **sublinearly**"),
        ((-0.2, -0.01), "about **constant**"),
        ((1.0, 1.4), "**like the network's size**"),
        ((-0.1, 0.6), "**not separable** from a constant count"),
        ((0.4, 1.2), "**not separable** from growth like the network's size"),
    ],
)
def test_the_surviving_count_across_sizes_is_read_from_ks_interval(k_interval, says):
    from ddpm_lottery.findings.scaling_law import surviving_growth

    assert says in surviving_growth(k_interval)


def test_two_widths_leave_psi_not_determined_with_its_interval_and_no_point():
    widths = (1.0, 2.0)
    law = law_of(synthetic(widths, psi=1.0), weights_of(widths), TARGET, delta=0.1, rounds=20)
    assert not law["determined"] and law["psi"] is None and law["k"] is None
    assert law["target"]["sparsity"] is None and law["psi_interval"] is not None
    assert any("2 widths" in reason for reason in law["because"])
    text = text_of(law)
    assert "ψ is **not determined**" in text and "ψ = " not in text and "**not determined** (bootstrap" in text


def test_curves_still_on_their_plateau_leave_psi_not_determined():
    # densities down to 0.8^4 = 41 %: x = w·d stays far above p, the error never leaves e_np
    widths = (1.0, 2.0, 4.0)
    curves = synthetic(widths, densities=[0.8**k for k in range(5)], noise=0.01)
    law = law_of(curves, weights_of(widths), TARGET, delta=0.05, rounds=20)
    assert not law["determined"] and law["psi"] is None
    assert any("rise past their dense plateau" in reason for reason in law["because"])


def test_the_committed_width_study_states_psi_only_where_its_widths_determine_it():
    """The law read from cpu-widths' own records, whatever part of the grown study is committed: a point only
    where its widths determine it, with the loss's fitted boundaries inside the brackets that measure alone
    places."""
    from pathlib import Path

    from ddpm_lottery.findings.collect import chosen_protocols, collect
    from ddpm_lottery.findings.levels import per_seed
    from ddpm_lottery.findings.scale import scale_findings
    from ddpm_lottery.findings.scaling_law import law_findings

    root = Path(__file__).resolve().parents[1] / "results" / "cpu-widths"
    if not (root / "study.json").exists():
        pytest.skip("results/cpu-widths is not in this checkout")
    collection = collect(root)
    protocols = chosen_protocols(collection)
    summary = [{"search": s, "per_seed": per_seed(collection, protocols, s)} for s in collection.searches]
    bounds = scale_findings(collection, summary)["boundaries"]
    (entry,) = law_findings(collection, {"loss": protocols["loss"]}, bounds, rounds=10)
    # the p = 0.5 family, one group per width (p20 has one network); while the grown study runs, the 1/2x
    # and 4x widths join it and each width's finer search joins its own width's group
    finer = {"unified-half": set(), "unified": {"unified-fine"}, "unified-2x": {"unified-2x-fine"}, "unified-4x": set()}
    for group in entry["networks"]:
        (base,) = [search for search in group if search in finer]
        assert set(group) - {base} <= finer[base]
    assert {"unified", "unified-2x"} <= {search for group in entry["networks"] for search in group}
    law = entry["measures"]["loss"]
    if len(entry["networks"]) < 3:  # two widths: never a point
        assert not law["determined"] and law["psi"] is None and law["target"]["sparsity"] is None
    else:  # a point only where it is determined
        assert (law["psi"] is None) == (not law["determined"])
    assert 0 < law["delta"] < 0.05  # the paired intervals of the held-out loss are narrow
    for network in law["networks"]:
        low, high = network["measured"]
        if high is not None:  # a width still running has found no worse level yet: its bracket is open
            assert low < network["fitted"] <= high
