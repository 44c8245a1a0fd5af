"""(e) and (f): where the boundary sits as the network widens, and as the pruning rate changes.

A search's *boundary* is bracketed by two of its levels, found as question (a) finds them but for each
data seed alone: the sparsest level no measure finds worse than the search's own dense model, and the
next level, the first that some measure finds worse (each level is pruned from the one before, so the
boundary lies between them).  A level is "worse" for a seed when some measure's paired bootstrap
interval of (level − dense) over images excludes zero.  The search's bracket holds every seed's: from
the least sparse of their sparsest-not-worse levels to the sparsest of their first-worse levels.  Per
seed, because (a)'s t interval over two seeds is some twelve standard errors wide while one seed's is a
bootstrap: brackets of searches with different numbers of seeds would not compare like with like, and
the spread from seed to seed enters as the width of the hull instead.  So a boundary is a bracket, of
sparsity and of surviving prunable weights:

- sparsity in (sparsest not worse, first worse], or above the sparsest level when none was worse;
- the fewest surviving prunable weights that still win: in (those of the first worse level, those of the
  sparsest not worse].

Two brackets that do not overlap separate two searches; brackets that overlap leave the question
undecided at this spacing of levels, which finer levels around the boundary (or more data seeds, which
narrow the intervals behind each verdict) would decide.

- **(e) width**: searches of one strategy and pruning rate on networks of different size: does the
  boundary's sparsity rise with width, and does its surviving weight count grow, shrink or stay?
- **(f) rate**: searches of one strategy on one network at different rates (the paper's p = 20 % against
  50 %), and ``varying`` against a search that imposes no profile at each rate.
"""

from __future__ import annotations

import math

from ddpm_lottery.config import ModelConfig
from ddpm_lottery.findings.collect import Collection, record_of
from ddpm_lottery.measures.stats import seed_mean
from ddpm_lottery.models.networks import meta_network, network_family
from ddpm_lottery.pruning.modules import prunable_names
from ddpm_lottery.pruning.strategies import STRATEGIES
from ddpm_lottery.runs.run import Run

UNDECIDED = "not separable at this spacing of levels"


def _metrics(by_seed: dict[int, Run], level: int) -> dict | None:
    for run in by_seed.values():
        if level in run.finished_levels():
            return run.level(level).metrics()
    return None


def _prune(by_seed: dict[int, Run]):
    return next(iter(by_seed.values())).config.prune


def boundary(collection: Collection, search: str, answer: dict) -> dict | None:
    """One search's boundary bracket, from the (a) answers of its seeds alone; None before any is measured."""
    by_seed = collection.searches[search]
    dense = _metrics(collection.dense_for(search), 0) or _metrics(by_seed, 0)
    if dense is None:
        return None
    seeds = {}
    for seed, entry in (answer.get("per_seed") or {}).items():
        if not entry.get("measured"):
            continue
        run = by_seed[int(seed)]

        def side(level):
            if level is None:
                return None
            surviving = run.level(level["level"]).metrics()["surviving_prunable"]
            return {"level": level["level"], "sparsity": level["sparsity"], "surviving": surviving}

        seeds[seed] = (side(entry["sparsest_not_worse"]), side(entry.get("first_worse")))
    if not seeds:
        return None
    low, high = seed_hull(list(seeds.values()))
    prune = _prune(by_seed)
    strategy, order = collection.strategies[search]
    model = next(iter(by_seed.values())).config.model
    return {
        "search": search,
        "strategy": strategy,
        "order": order,
        "network_family": network_family(model).name,
        "conditional": model.class_conditional,
        "prune_ratio": prune.prune_ratio,
        "ratio_increment": prune.ratio_increment if STRATEGIES[strategy].imposes_profile else None,
        "network": str(next(iter(collection.dense_for(search).values())).root),
        "weights": dense["prunable_parameters"],
        "seeds": {seed: {"not_worse": a, "first_worse": b} for seed, (a, b) in sorted(seeds.items())},
        "not_worse": low,
        "first_worse": high,
        # every seed's boundary lies above `low` and at or below `high` (None: open on that side)
        "sparsity_bracket": [low["sparsity"] if low else 0.0, high["sparsity"] if high else None],
        "surviving_bracket": [
            high["surviving"] if high else 0,
            low["surviving"] if low else dense["prunable_parameters"],
        ],
    }


def seed_hull(brackets: list[tuple[dict | None, dict | None]]) -> tuple[dict | None, dict | None]:
    """The bracket that holds every seed's: (not worse, first worse) levels as dicts with a sparsity, None
    for "none" (no level not worse; no level worse yet). Its low end is the least sparse of the seeds'
    sparsest-not-worse levels, its high end the sparsest of their first-worse levels, open when a seed has
    none worse yet."""
    lows = [low for low, _ in brackets]
    highs = [high for _, high in brackets]
    low = None if any(x is None for x in lows) else min(lows, key=lambda x: x["sparsity"])
    high = None if any(x is None for x in highs) else max(highs, key=lambda x: x["sparsity"])
    return low, high


def bracket_order(first: list, second: list) -> str:
    """How bracket ``second`` sits against ``first``: "higher", "lower" or undecided (they overlap).
    A bracket is [low, high] with the boundary above low and at or below high; None is open."""
    a_low, a_high = first
    b_low, b_high = second
    if a_high is not None and b_low >= a_high:
        return "higher"
    if b_high is not None and a_low >= b_high:
        return "lower"
    return UNDECIDED


def family(entry: dict) -> tuple:
    """What searches of different networks must share for (e) to compare them: strategy, order, rate, and the
    kind of network (a DiT beside a U-Net, or a class-conditional network beside an unconditional one, is
    not a change of width: (g) and (h) compare those)."""
    return (
        entry["strategy"],
        entry["order"],
        entry["prune_ratio"],
        entry["ratio_increment"],
        entry["network_family"],
        entry["conditional"],
    )


def bracket_rank(entry: dict) -> tuple:
    """How well a boundary entry places its network's boundary, best first: the bracket over more data seeds
    (a finer search run on fewer seeds so far is narrower partly because it holds fewer), then a closed one
    before an open one, then the narrowest."""
    low, high = entry["sparsity_bracket"]
    return (-len(entry["seeds"]), high is None, (high if high is not None else 1.0) - low)


def finest_per_network(bounds: list[dict]) -> set[str]:
    """Per family and network, the search that places the network's boundary best (:func:`bracket_rank`): a
    search of finer levels beside a coarser one of the same rate, once it has as many seeds."""
    best: dict[tuple, dict] = {}
    for b in bounds:
        key = (family(b), b["network"])
        if key not in best or bracket_rank(b) < bracket_rank(best[key]):
            best[key] = b
    return {b["search"] for b in best.values()}


def scale_findings(collection: Collection, summary: list[dict]) -> dict:
    """(e) and (f) from the (a) answers of every search; empty lists where the study varies neither."""
    bounds = [b for b in (boundary(collection, e["search"], e) for e in summary) if b is not None]
    finest = finest_per_network(bounds)
    widths, rates, profiles = [], [], []
    for i, first in enumerate(bounds):
        for second in bounds[i + 1 :]:
            same_network = first["network"] == second["network"]
            if not same_network and family(first) == family(second):
                if first["search"] not in finest or second["search"] not in finest:
                    continue  # a network with finer levels beside coarser ones is compared by its finest
                small, large = sorted((first, second), key=lambda b: b["weights"])
                widths.append(
                    {
                        "smaller": small["search"],
                        "larger": large["search"],
                        "weights": [small["weights"], large["weights"]],
                        "sparsity": bracket_order(small["sparsity_bracket"], large["sparsity_bracket"]),
                        "surviving": bracket_order(small["surviving_bracket"], large["surviving_bracket"]),
                    }
                )
            elif same_network and first["strategy"] == second["strategy"] and first["order"] == second["order"]:
                if first["prune_ratio"] != second["prune_ratio"]:
                    fast, slow = sorted((first, second), key=lambda b: -b["prune_ratio"])
                    rates.append(
                        {
                            "faster": fast["search"],
                            "slower": slow["search"],
                            "rates": [fast["prune_ratio"], slow["prune_ratio"]],
                            "sparsity": bracket_order(fast["sparsity_bracket"], slow["sparsity_bracket"]),
                        }
                    )
            elif same_network and first["prune_ratio"] == second["prune_ratio"]:
                profiled = [b for b in (first, second) if STRATEGIES[b["strategy"]].imposes_profile]
                plain = [b for b in (first, second) if not STRATEGIES[b["strategy"]].imposes_profile]
                if len(profiled) == 1 and len(plain) == 1:
                    profiles.append(
                        {
                            "varying": profiled[0]["search"],
                            "plain": plain[0]["search"],
                            "rate": first["prune_ratio"],
                            "sparsity": bracket_order(plain[0]["sparsity_bracket"], profiled[0]["sparsity_bracket"]),
                        }
                    )
    projected = projection(bounds, widths, prunable_weights_of(PAPER_NETWORK)) if widths else None
    return {"boundaries": bounds, "widths": widths, "rates": rates, "profiles": profiles, "projection": projected}


def surviving_curves(collection: Collection, protocols: dict[str, str], widths: list[dict]) -> dict[str, dict]:
    """Per measure, for the searches that (e) compares: quality against surviving prunable weights, one
    curve per network, its dense model the point of all its weights.  A point is (surviving, mean, low, high)."""
    searches = sorted({w[side] for w in widths for side in ("smaller", "larger")})
    out = {}
    for measure, key in protocols.items():
        curves = {}
        for search in searches:
            by_seed = collection.searches[search]
            points = []
            levels = {i for run in by_seed.values() for i in run.finished_levels()}
            for index in sorted(levels):
                source = collection.dense_for(search) if index == 0 else by_seed
                stats = seed_mean([record_of(r, index, key) for r in source.values()], collection.confidence)
                metrics = _metrics(source, index)
                if stats is not None and metrics is not None:
                    points.append((metrics["surviving_prunable"], *stats))
            if points:
                curves[f"{search} ({_metrics(collection.dense_for(search), 0)['prunable_parameters']:,} weights)"] = (
                    points
                )
        if len(curves) >= 2:  # a measure only some widths have (a copied level's extra records) compares nothing
            out[measure] = {"curves": curves}
    return out


#: The network of the paper's CIFAR-10 results (35.7M weights, 90-99 % sparse tickets claimed).
PAPER_NETWORK = "ddpm-cifar10"
PAPER_CLAIM = "90–99 %"


def prunable_weights_of(preset: str, channels: int = 3) -> int:
    """A preset's prunable weights, counted on the meta device (no memory, no weights drawn)."""
    model = meta_network(ModelConfig(preset=preset), channels)
    parameters = dict(model.named_parameters())
    return sum(parameters[name].numel() for name in prunable_names(model))


def projection(bounds: list[dict], widths: list[dict], target_weights: int, target: str = PAPER_NETWORK) -> dict | None:
    """A projection, not a measurement: the boundary's surviving weights S against the network's
    prunable weights W fitted as S = c W^k through the smallest and the largest network of (e), each at
    the geometric middle of its bracket; the range takes the brackets' ends.  None unless both brackets
    are closed (each search has a level found worse)."""
    compared = {w[side] for w in widths for side in ("smaller", "larger")}
    closed = sorted(
        (b for b in bounds if b["search"] in compared and b["first_worse"] and b["not_worse"]),
        key=lambda b: b["weights"],
    )
    if len(closed) < 2 or closed[0]["weights"] == closed[-1]["weights"]:
        return None
    small, large = closed[0], closed[-1]
    span = math.log(large["weights"] / small["weights"])

    def exponent(s_small: float, s_large: float) -> float:
        return math.log(s_large / s_small) / span

    def middle(b):
        low, high = b["surviving_bracket"]
        return math.sqrt(low * high)

    def sparsity_at(k: float, anchor: float) -> float:
        surviving = anchor * (target_weights / large["weights"]) ** k
        return 1 - min(surviving, target_weights) / target_weights

    k = exponent(middle(small), middle(large))
    # the fewest survivors at the target: the smallest exponent (large network's low end over the small one's
    # high end) from the large network's low end; the most: the other way round
    k_low = exponent(small["surviving_bracket"][1], large["surviving_bracket"][0])
    k_high = exponent(small["surviving_bracket"][0], large["surviving_bracket"][1])
    return {
        "target": target,
        "weights": target_weights,
        "basis": [small["search"], large["search"]],
        "exponent": k,
        "exponent_range": [k_low, k_high],
        "sparsity": sparsity_at(k, middle(large)),
        "sparsity_range": [
            sparsity_at(k_high, large["surviving_bracket"][1]),
            sparsity_at(k_low, large["surviving_bracket"][0]),
        ],
        "claim": PAPER_CLAIM,
    }
