"""Statistics of the findings: intervals of means and of paired differences, and their verdicts.

Every comparison is a difference (first minus second; all measures are lower-is-better) with an
interval, and a verdict: "better" or "worse" when the interval excludes zero, else "not separable with
this N and these seeds".  With several data seeds the interval is a Student-t interval over the seeds'
paired differences (the seed-to-seed spread, which includes the sampling noise of each measurement);
with one seed it is the paired bootstrap over the generated (or held-out) images, which sees the
sampling noise only.

Only numpy loads at import time: scipy and the evaluation module (torch) load on first use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

NOT_SEPARABLE = "not separable"


def percentile_interval(values, level: float = 0.95) -> tuple[float, float]:
    """The bootstrap resamples' percentile interval (linear interpolation between order statistics)."""
    import torch  # deferred: this module stays cheap; the evaluations that call this have torch loaded

    ordered = torch.tensor(sorted(values), dtype=torch.float64)
    low = torch.quantile(ordered, (1 - level) / 2).item()
    high = torch.quantile(ordered, 1 - (1 - level) / 2).item()
    return low, high


def centred_interval(value: float, replicates: list[float], confidence: float) -> tuple[float, float]:
    """The resamples' percentile interval shifted so the resamples' mean sits on ``value``."""
    low, high = percentile_interval(replicates, confidence)
    shift = value - float(np.mean(replicates))
    return low + shift, high + shift


def t_interval(values: list[float], confidence: float) -> tuple[float, float, float]:
    """Mean and Student-t interval of the mean (at least two values)."""
    from scipy.stats import t  # deferred: scipy is heavy and this module stays cheap

    mean = float(np.mean(values))
    half = float(t.ppf(0.5 + confidence / 2, len(values) - 1)) * float(np.std(values, ddof=1)) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def pairwise_interval(gaps: list[tuple[str, str, float]], confidence: float) -> tuple[float, float, float]:
    """Mean and interval of a figure measured on pairs of tickets, ``(ticket_a, ticket_b, value)``.

    The pairs of s tickets share them (three data seeds give three pairs of three tickets), so a t
    interval over the pairs would count dependent values as independent ones. The replicate is the
    ticket: the jackknife over tickets (leave one ticket and every pair it is in out; the mean of
    pairwise values is a U-statistic) gives the variance, with s − 1 degrees of freedom. No interval
    when a ticket is in every pair (one pair, or a star of pairs): nothing is left to compare it by."""
    from scipy.stats import t  # deferred: scipy is heavy and this module stays cheap

    mean = float(np.mean([value for _, _, value in gaps]))
    tickets = sorted({run for a, b, _ in gaps for run in (a, b)})
    left_out = [[value for a, b, value in gaps if ticket not in (a, b)] for ticket in tickets]
    if len(gaps) < 2 or not all(left_out):
        return mean, -math.inf, math.inf
    n = len(tickets)
    estimates = np.array([np.mean(values) for values in left_out])
    variance = (n - 1) / n * float(np.sum((estimates - estimates.mean()) ** 2))
    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * math.sqrt(variance)
    return mean, mean - half, mean + half


@dataclass
class Difference:
    value: float
    low: float
    high: float
    seeds: int
    method: str
    # over several seeds: how many seeds' own paired bootstraps over images find the first better, and worse
    seeds_better: int = 0
    seeds_worse: int = 0

    def verdict(self) -> str:
        if self.high < 0:
            return "better"
        if self.low > 0:
            return "worse"
        return NOT_SEPARABLE

    def text(self, digits: int = 3) -> str:
        return f"{self.value:+.{digits}g} [{self.low:+.{digits}g}, {self.high:+.{digits}g}]"

    def as_dict(self) -> dict:
        return {
            "difference": self.value,
            "interval": [self.low, self.high],
            "seeds": self.seeds,
            "method": self.method,
            "verdict": self.verdict(),
            "seeds_better": self.seeds_better,
            "seeds_worse": self.seeds_worse,
        }


def paired_difference(pairs: list[tuple[dict, dict]], confidence: float) -> Difference | None:
    """first − second over the seeds' record pairs; t over seeds, or the paired bootstrap for one seed."""
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    if not pairs:
        return None
    values = [a["value"] - b["value"] for a, b in pairs]
    mean = float(np.mean(values))
    if len(pairs) >= 2:
        # Each seed's own verdict, from the sampling noise alone: it cannot replace the t interval (it
        # ignores the spread from seed to seed), but it says when every seed points the same way and only
        # that spread keeps the interval open.
        own = [_seed_bootstrap(a, b, confidence) for a, b in pairs]
        return Difference(
            *t_interval(values, confidence),
            len(values),
            f"t over {len(values)} seeds",
            seeds_better=sum(1 for i in own if i and i[1] < 0),
            seeds_worse=sum(1 for i in own if i and i[0] > 0),
        )
    interval = _seed_bootstrap(*pairs[0], confidence)
    if interval is None:  # records without matching resamples: one seed then says nothing beyond its value
        return Difference(mean, -math.inf, math.inf, 1, "one seed, no matching bootstrap resamples")
    return Difference(mean, *interval, 1, f"paired bootstrap, {len(pairs[0][0]['replicates'])} resamples, one seed")


def _seed_bootstrap(a: dict, b: dict, confidence: float) -> tuple[float, float] | None:
    """The interval of one seed's a − b from the paired bootstrap over images (the two measurements
    resample the same image indices), or None when the records carry no matching resamples."""

    if len(a.get("replicates") or []) != len(b.get("replicates") or []) or not a.get("replicates"):
        return None
    replicates = (np.array(a["replicates"]) - np.array(b["replicates"])).tolist()
    return centred_interval(a["value"] - b["value"], replicates, confidence)


def seed_mean(records: list[dict | None], confidence: float) -> tuple[float, float, float] | None:
    """Mean ± t interval of one measure over seeds (or the bootstrap interval of a single seed)."""
    records = [r for r in records if r is not None]
    if not records:
        return None
    if len(records) == 1:
        return records[0]["value"], *records[0]["interval"]
    return t_interval([r["value"] for r in records], confidence)


__all__ = ["NOT_SEPARABLE", "Difference", "paired_difference", "pairwise_interval", "seed_mean", "t_interval"]
