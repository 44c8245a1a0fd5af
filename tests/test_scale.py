"""findings/scale.py: (e) width and (f) rate as boundary brackets, and the labelled projection."""

import math

import pytest

from ddpm_lottery.findings import scale
from ddpm_lottery.findings.render import scale_blocks
from ddpm_lottery.findings.scale import UNDECIDED, bracket_order, projection, scale_findings


def bound(search, weights, not_worse, first_worse, network=None, strategy="unified", rate=0.5, seeds=2):
    """A boundary as scale.boundary makes it: (level, sparsity) of each side, surviving from the weights, the
    same bracket on each of ``seeds`` data seeds."""

    def side(entry):
        if entry is None:
            return None
        level, sparsity = entry
        return {"level": level, "sparsity": sparsity, "surviving": round(weights * (1 - sparsity))}

    low, high = side(not_worse), side(first_worse)
    return {
        "search": search,
        "strategy": strategy,
        "order": "forward",
        "prune_ratio": rate,
        "ratio_increment": 0.01 if strategy == "varying" else None,
        "network": network or f"net-{weights}",
        "network_family": "unet",
        "conditional": False,
        "weights": weights,
        "not_worse": low,
        "first_worse": high,
        "seeds": {str(seed): {"not_worse": low, "first_worse": high} for seed in range(seeds)},
        "sparsity_bracket": [low["sparsity"] if low else 0.0, high["sparsity"] if high else None],
        "surviving_bracket": [high["surviving"] if high else 0, low["surviving"] if low else weights],
    }


def test_brackets_are_ordered_only_when_they_do_not_overlap():
    assert bracket_order([0.875, 0.9375], [0.9375, 0.96875]) == "higher"
    assert bracket_order([0.9375, 0.96875], [0.875, 0.9375]) == "lower"
    assert bracket_order([0.875, 0.96875], [0.9375, 0.984]) == UNDECIDED
    # no level worse yet: open above, so only a bracket wholly below it is "lower"
    assert bracket_order([0.9, None], [0.5, 0.75]) == "lower" and bracket_order([0.9, None], [0.95, 0.97]) == UNDECIDED


def test_the_projection_fits_a_power_law_through_the_brackets_middles():
    small = bound("unified", 1000, (2, 0.8), (3, 0.9))  # surviving in [100, 200]
    large = bound("unified-2x", 4000, (3, 0.9), (4, 0.95))  # surviving in [200, 400]
    widths = [{"smaller": "unified", "larger": "unified-2x"}]
    result = projection([small, large], widths, 64000, target="big")
    assert result["exponent"] == pytest.approx(0.5)  # middles sqrt(2e4) and sqrt(8e4): a factor 2 over 4x weights
    assert result["sparsity"] == pytest.approx(1 - math.sqrt(8e4) * 4 / 64000)
    assert result["exponent_range"] == pytest.approx([0.0, 1.0])
    assert result["sparsity_range"] == pytest.approx([1 - 400 * 16 / 64000, 1 - 200 / 64000])
    # a width whose boundary is open (nothing worse yet) gives no projection
    assert projection([small, bound("unified-2x", 4000, (4, 0.95), None)], widths, 64000) is None


def test_widths_rates_and_profiles_are_paired_by_network_strategy_and_rate(monkeypatch):
    bounds = {
        "unified": bound("unified", 1000, (3, 0.875), (4, 0.9375), network="tiny"),
        "unified-2x": bound("unified-2x", 4000, (4, 0.9375), (5, 0.96875)),
        "unified-p20": bound("unified-p20", 1000, (10, 0.8926), (11, 0.9141), network="tiny", rate=0.2),
        "varying-p20": bound(
            "varying-p20", 1000, (9, 0.8658), (10, 0.8926), network="tiny", strategy="varying", rate=0.2
        ),
    }
    monkeypatch.setattr(scale, "boundary", lambda collection, search, answer: bounds[search])
    monkeypatch.setattr(scale, "prunable_weights_of", lambda preset: 64000)
    result = scale_findings(None, [{"search": name} for name in bounds])
    (width,) = result["widths"]
    assert (width["smaller"], width["larger"], width["sparsity"]) == ("unified", "unified-2x", "higher")
    # the fewest survivors that still win lie in (62, 125] at 1x and in (125, 250] at 2x: disjoint, so more
    assert width["surviving"] == "higher"
    (rate,) = result["rates"]
    assert (rate["faster"], rate["slower"], rate["sparsity"]) == ("unified", "unified-p20", UNDECIDED)
    (profile,) = result["profiles"]
    assert (profile["varying"], profile["plain"], profile["sparsity"]) == ("varying-p20", "unified-p20", "lower")
    text = " ".join(str(block[1]) for block in scale_blocks(result))
    assert "**(e) Width**" in text and "**(f) Pruning rate**" in text and "A projection, not a measurement" in text
    assert "unified (1,000 prunable weights): level 3 (87.50 %, 125 surviving) not worse" in text


def test_a_study_that_varies_neither_width_nor_rate_says_nothing_of_them():
    assert scale_blocks({"boundaries": [], "widths": [], "rates": [], "profiles": [], "projection": None}) == []


class _Level:
    def __init__(self, sparsity):
        self._sparsity = sparsity

    def metrics(self):
        return {"sparsity": self._sparsity}


class _Run:
    """What the level pairing reads of a run: its finished levels and their sparsities."""

    def __init__(self, sparsities):
        self.sparsities = sparsities

    def finished_levels(self):
        return list(range(len(self.sparsities)))

    def level(self, index):
        return _Level(self.sparsities[index])


class _Collection:
    def __init__(self, searches, strategies):
        self.searches, self.strategies = searches, strategies

    def same_network(self, first, second):
        return True


def test_varying_under_the_papers_schedule_shares_no_level_with_unified_and_says_so():
    from ddpm_lottery.findings.questions import profile_comparisons
    from ddpm_lottery.findings.render import blocks

    # p + j*q prunes more a round than p alone: the two searches' sparsities interleave (cpu-widths' p20 levels)
    collection = _Collection(
        {
            "unified-p20": {0: _Run([0.0, 0.2, 0.36, 0.488, 0.5905])},
            "varying-p20": {0: _Run([0.0, 0.3158, 0.5293, 0.6744])},
        },
        {"unified-p20": ("unified", "forward"), "varying-p20": ("varying", "forward")},
    )
    rows, unpaired = profile_comparisons(collection, {})
    assert rows == [] and unpaired == [{"question": "b", "first": "varying-p20", "second": "unified-p20"}]
    result = {
        "protocols": {},
        "confidence": 0.95,
        "rows": [],
        "unpaired": unpaired,
        "sparsest_not_worse": [],
        "cka": [],
        "notes": {"declares": {"b": True}},
        "scale": {
            "boundaries": [],
            "profiles": [{"varying": "varying-p20", "plain": "unified-p20", "rate": 0.2, "sparsity": "lower"}],
        },
    }
    text = " ".join(str(block[1]) for block in blocks(result))
    assert "(b) varying against unified/global: no level pair" in text and "varying-p20 and unified-p20" in text
    assert "(f) varying against unified at each rate above" in text and "not measured yet" not in text


def test_a_search_bracket_holds_every_seeds_bracket():
    from ddpm_lottery.findings.boundary_words import bracket_words
    from ddpm_lottery.findings.scale import seed_hull

    def level(index, sparsity):
        return {"level": index, "sparsity": sparsity, "surviving": round(1000 * (1 - sparsity))}

    # seed 0 wins to 87.5 % and loses at 93.75 %; seed 1 wins to 93.75 % and loses at 96.9 %
    seeds = [(level(3, 0.875), level(4, 0.9375)), (level(4, 0.9375), level(5, 0.96875))]
    low, high = seed_hull(seeds)
    assert (low["level"], high["level"]) == (3, 5)
    assert seed_hull([*seeds, (level(5, 0.96875), None)])[1] is None  # a seed not worse yet leaves it open
    assert seed_hull([(None, level(1, 0.5)), seeds[0]]) == (None, level(4, 0.9375))
    entry = bound("unified", 1000, (3, 0.875), (5, 0.96875))
    entry["seeds"] = {
        "0": {"not_worse": seeds[0][0], "first_worse": seeds[0][1]},
        "1": {"not_worse": seeds[1][0], "first_worse": seeds[1][1]},
    }
    text = bracket_words(entry)
    assert "level 3 (87.50 %, 125 surviving) not worse on every seed" in text
    assert "level 5 (96.88 %, 31 surviving) worse on every seed" in text
    assert "seed 0: 87.50 % not worse, 93.75 % worse; seed 1: 93.75 % not worse, 96.88 % worse" in text


def test_a_network_with_finer_levels_is_compared_by_its_finest_search(monkeypatch):
    # unified-fine continues unified's 50 % rounds at 20 % from 87.5 %: the same rate family, one network
    bounds = {
        "unified": bound("unified", 1000, (3, 0.875), (4, 0.9375), network="tiny"),
        "unified-fine": bound("unified-fine", 1000, (5, 0.92), (6, 0.936), network="tiny"),
        "unified-2x": bound("unified-2x", 4000, (4, 0.9375), (5, 0.96875)),
    }
    assert scale.finest_per_network(list(bounds.values())) == {"unified-fine", "unified-2x"}
    # while the finer search has fewer seeds than the coarse one, its narrower bracket does not yet place it
    fewer = {**bounds, "unified-fine": bound("unified-fine", 1000, (5, 0.92), (6, 0.936), network="tiny", seeds=1)}
    assert scale.finest_per_network(list(fewer.values())) == {"unified", "unified-2x"}
    monkeypatch.setattr(scale, "boundary", lambda collection, search, answer: bounds[search])
    monkeypatch.setattr(scale, "prunable_weights_of", lambda preset: 64000)
    result = scale_findings(None, [{"search": name} for name in bounds])
    assert [(w["smaller"], w["larger"]) for w in result["widths"]] == [("unified-fine", "unified-2x")]
