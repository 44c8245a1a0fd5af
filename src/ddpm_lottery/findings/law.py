"""The error of pruned networks as a law of density and width (Rosenfeld et al., ICML 2021), fitted.

For one network of width w, IMP's error at density d (the fraction of prunable weights kept) is

    err(d) = e_np · |(x − j·p·(e_up/e_np)^(1/g)) / (x − j·p)|^g,   x = w^ψ · d,   j = √−1,

a low plateau at the dense error e_np, a power law of slope −g, and a high plateau at e_up.  Across
widths the one invariant is m* = w^ψ · d: curves of different widths are one curve shifted along log d.
Rosenfeld's invariant also has depth, l^φ; every network of a width study has the same depth, so l^φ is
one constant folded into p, and φ is neither fitted nor reported.  e_np is each network's own (fitted,
one per network, anchored by its dense level); e_up, g, p and ψ are shared.

Beside it, a simpler candidate: a power law with the low plateau alone,
err(d) = e_np · (1 + (c / x)^g), with the same invariant (three shared constants, no high plateau; the
joint form's middle and low end).  Which of the two the data support is decided by the held-out error of
the fit: each pruned level of each network in turn is left out, the rest fitted, and the left-out level
predicted (the root mean square of log error over them; the simpler form wins ties).

Fits are least squares in log error (scipy's bounded trust region, from a few starting ψ), so a level at
ten times the dense error weighs as much as one at a tenth.  The interval of ψ, and of every boundary the
law predicts, is a bootstrap over data seeds (drawn with replacement per network) and pruned levels (drawn
with replacement per network; the dense level always stays, it anchors e_np), each round refitted.

The boundary density d* is where err(d*) = e_np · (1 + δ); for the plateau form d* · w^ψ is exactly
invariant, for the joint form nearly (its e_np enters).  The surviving weights at the boundary,
S = d* · W with W ∝ w², grow as W^k with k = 1 − ψ/2.  :func:`law_of` states ψ only when it is determined:
:data:`MIN_WIDTHS` networks whose curves rise past their plateau, and a bootstrap interval of ψ narrower
than :data:`MAX_PSI_INTERVAL`; otherwise the interval alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

JOINT = "joint form"
PLATEAU = "power law with a plateau"

#: ψ's starting points: the cost has a valley per ψ where curves of different widths line up.
_PSI_STARTS = (0.0, 1.0, 2.0)


@dataclass(frozen=True)
class Curves:
    """Measurements of one measure: one entry per (network, data seed, level)."""

    width: np.ndarray  # w of the point's network, relative to the narrowest (the sqrt of the weights' ratio)
    density: np.ndarray  # the fraction of prunable weights kept (1 for a dense model)
    error: np.ndarray  # the measure's value (lower is better, positive)
    network: np.ndarray  # int: which network
    seed: np.ndarray  # int: which data seed
    level: np.ndarray  # int: which level of its network (the same density on every seed)

    def take(self, index: np.ndarray) -> Curves:
        return Curves(*(getattr(self, f)[index] for f in ("width", "density", "error", "network", "seed", "level")))

    @property
    def networks(self) -> list[int]:
        return sorted({int(n) for n in self.network})


@dataclass(frozen=True)
class Fit:
    form: str
    shared: dict[str, float]  # the shared constants (psi, g, and p and e_up, or c)
    dense: dict[int, float]  # network -> e_np
    cost: float

    @property
    def psi(self) -> float:
        return self.shared["psi"]

    def log_error(self, width, density, network) -> np.ndarray:
        log_enp = np.log([self.dense[int(n)] for n in np.atleast_1d(network)])
        log_x = self.psi * np.log(width) + np.log(density)
        return _log_error(self.form, _vector(self.form, self.shared), log_enp, log_x)

    def boundary_density(self, width: float, dense_error: float, delta: float) -> float | None:
        """d* where err(d*) = e_np (1 + δ) at this width and dense error; None where the error never rises
        that far (the joint form's high plateau below it).  A δ at or below zero (the threshold under the
        fitted plateau) puts the boundary at the dense model."""
        if delta <= 0:
            return 1.0
        g = self.shared["g"]
        if self.form == PLATEAU:
            log_x = math.log(self.shared["c"]) - math.log(delta) / g
        else:
            ratio = (1 + delta) ** (2 / g)
            a_squared = (self.shared["p"] * (self.shared["e_up"] / dense_error) ** (1 / g)) ** 2
            numerator = a_squared - ratio * self.shared["p"] ** 2
            if numerator <= 0:
                return None
            log_x = 0.5 * math.log(numerator / (ratio - 1))
        return math.exp(log_x - self.psi * math.log(width))


_SHARED = {JOINT: ("e_up", "g", "p", "psi"), PLATEAU: ("c", "g", "psi")}


def _vector(form: str, shared: dict) -> np.ndarray:
    """The shared constants as the optimiser sees them: logs, except ψ."""
    return np.array([shared[k] if k == "psi" else math.log(shared[k]) for k in _SHARED[form]])


def _log_error(form: str, theta: np.ndarray, log_enp: np.ndarray, log_x: np.ndarray) -> np.ndarray:
    if form == PLATEAU:
        log_c, log_g, _ = theta
        return log_enp + np.logaddexp(0.0, math.exp(log_g) * (log_c - log_x))
    log_up, log_g, log_p, _ = theta
    g = math.exp(log_g)
    log_a = log_p + (log_up - log_enp) / g
    # |x − j a|^2 = x^2 + a^2, in logs so that neither overflows
    return log_enp + g / 2 * (np.logaddexp(2 * log_x, 2 * log_a) - np.logaddexp(2 * log_x, 2 * log_p))


def _bounds(form: str, curves: Curves) -> tuple[list[float], list[float]]:
    low_err, high_err = float(np.log(curves.error).min()), float(np.log(curves.error).max())
    g = (math.log(0.05), math.log(20.0))
    psi = (-4.0, 4.0)
    if form == PLATEAU:
        shared = [(-30.0, 10.0), g, psi]
    else:
        shared = [(low_err - 5.0, high_err + 10.0), g, (-30.0, 10.0), psi]
    lows, highs = zip(*shared)
    return list(lows), list(highs)


def _start(form: str, curves: Curves, dense: dict[int, float], psi: float) -> np.ndarray:
    """A starting point from the data: ψ given, the power law's knee at the densest level that has risen."""
    risen = [d for d, e, n in zip(curves.density, curves.error, curves.network) if e > 1.2 * dense[int(n)] and d < 1]
    knee = max(risen) if risen else float(curves.density.min())
    log_x = psi * math.log(float(np.median(curves.width))) + math.log(knee)
    if form == PLATEAU:
        return np.array([log_x, 0.0, psi])
    return np.array([math.log(float(curves.error.max())) + math.log(2.0), 0.0, log_x, psi])


def _dense_guess(curves: Curves) -> dict[int, float]:
    """Each network's e_np to start from: its dense level's median, else its densest level's."""
    out = {}
    for n in curves.networks:
        mine = curves.network == n
        top = curves.density[mine].max()
        out[n] = float(np.median(curves.error[mine & (curves.density == top)]))
    return out


def fit(curves: Curves, form: str, start: Fit | None = None) -> Fit | None:
    """The least-squares fit of ``form`` in log error (from ``start``, else from each of a few ψ); None
    when no start converges."""
    networks = curves.networks
    column = {n: i for i, n in enumerate(networks)}
    which = np.array([column[int(n)] for n in curves.network])
    log_w, log_d, log_e = np.log(curves.width), np.log(curves.density), np.log(curves.error)
    size = len(_SHARED[form])
    low, high = _bounds(form, curves)
    low = [-50.0] * len(networks) + low
    high = [50.0] * len(networks) + high

    def residuals(params):
        theta = params[len(networks) :]
        log_x = theta[-1] * log_w + log_d
        return _log_error(form, theta, params[which], log_x) - log_e

    if start is not None:
        starts = [np.concatenate([np.log([start.dense.get(n, 1.0) for n in networks]), _vector(form, start.shared)])]
    else:
        guess = _dense_guess(curves)
        enp = np.log([guess[n] for n in networks])
        starts = [np.concatenate([enp, _start(form, curves, guess, psi)]) for psi in _PSI_STARTS]
    best = None
    for x0 in starts:
        x0 = np.clip(x0, np.array(low) + 1e-9, np.array(high) - 1e-9)
        try:
            result = least_squares(residuals, x0, bounds=(low, high), method="trf", max_nfev=400)
        except (ValueError, FloatingPointError):
            continue
        if np.all(np.isfinite(result.fun)) and (best is None or result.cost < best.cost):
            best = result
    if best is None:
        return None
    theta = best.x[len(networks) :]
    shared = {k: float(v) if k == "psi" else float(math.exp(v)) for k, v in zip(_SHARED[form], theta[:size])}
    dense = {n: float(math.exp(best.x[column[n]])) for n in networks}
    return Fit(form, shared, dense, float(best.cost))


def held_out_error(curves: Curves, form: str) -> float | None:
    """The root mean square, over the pruned levels of every network, of the log error of the level's seed
    mean as predicted by the form fitted without that level; None when too few levels remain to fit."""
    errors = []
    for n in curves.networks:
        mine = curves.network == n
        for level in sorted({int(v) for v in curves.level[mine & (curves.density < 1)]}):
            out = mine & (curves.level == level)
            fitted = fit(curves.take(~out), form)
            if fitted is None:
                return None
            left = curves.take(out)
            predicted = fitted.log_error(left.width[:1], left.density[:1], left.network[:1])[0]
            errors.append(predicted - float(np.log(left.error).mean()))
    return float(np.sqrt(np.mean(np.square(errors)))) if errors else None


def deviation(curves: Curves, fitted: Fit) -> tuple[float, float | None]:
    """The fit's mean deviation (mean |observed / fitted − 1| over every network's levels, seeds averaged)
    against the seed-to-seed noise (mean relative standard deviation over the data seeds of a level; None
    with one seed)."""
    deviations, noise = [], []
    for n in curves.networks:
        for level in sorted({int(v) for v in curves.level[curves.network == n]}):
            here = curves.take((curves.network == n) & (curves.level == level))
            mean = float(here.error.mean())
            fitted_value = float(np.exp(fitted.log_error(here.width[:1], here.density[:1], here.network[:1])[0]))
            deviations.append(abs(mean / fitted_value - 1))
            if len(here.error) > 1:
                noise.append(float(np.std(here.error, ddof=1)) / mean)
    return float(np.mean(deviations)), (float(np.mean(noise)) if noise else None)


def resample(curves: Curves, rng: np.random.Generator) -> Curves:
    """One bootstrap draw: per network, its data seeds and its pruned levels with replacement (the dense
    level always kept)."""
    parts = []
    for n in curves.networks:
        mine = curves.network == n
        seeds = sorted({int(s) for s in curves.seed[mine]})
        pruned = sorted({int(v) for v in curves.level[mine & (curves.density < 1)]})
        dense = sorted({int(v) for v in curves.level[mine & (curves.density >= 1)]})
        levels = dense + list(rng.choice(pruned, size=len(pruned), replace=True)) if pruned else dense
        for seed in rng.choice(seeds, size=len(seeds), replace=True):
            for level in levels:
                parts.append(np.flatnonzero(mine & (curves.seed == seed) & (curves.level == level)))
    return curves.take(np.concatenate(parts))


def bootstrap(curves: Curves, fitted: Fit, rounds: int, seed: int = 0) -> list[Fit | None]:
    """``rounds`` refits of the form on resampled curves, each started from ``fitted``; deterministic."""
    rng = np.random.default_rng(seed)
    return [fit(resample(curves, rng), fitted.form, start=fitted) for _ in range(rounds)]


def percentile_interval(values: list[float], confidence: float) -> list[float] | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None
    tail = 100 * (1 - confidence) / 2
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]


#: The widest interval of ψ that still states a value (k = 1 − ψ/2 then spans 0.5).
MAX_PSI_INTERVAL = 1.0
MIN_WIDTHS = 3


def law_of(
    curves: Curves,
    weights: dict[int, int],
    target_weights: int,
    delta: float,
    confidence: float = 0.95,
    rounds: int = 200,
    target: str = "the target",
    claim: str = "",
) -> dict:
    """The law for one measure: both forms' held-out errors, the chosen one's ψ and k with intervals, its
    deviation against the seed-to-seed noise, and the boundary at every measured width and at the target
    (``weights``: network -> its prunable weights; the narrowest has w = 1)."""
    reference = min(weights.values())
    forms = {}
    for form in (PLATEAU, JOINT):
        fitted = fit(curves, form)
        forms[form] = {
            "held_out": held_out_error(curves, form) if fitted else None,
            "fit": fitted,
        }
    scored = [f for f in (PLATEAU, JOINT) if forms[f]["held_out"] is not None]
    out = {
        "delta": delta,
        "forms": {
            f: {"held_out": v["held_out"], "shared": v["fit"].shared if v["fit"] else None} for f, v in forms.items()
        },
        "target": {
            "name": target,
            "claim": claim,
            "weights": target_weights,
            "width": math.sqrt(target_weights / reference),
        },
    }
    if not scored:
        return {**out, "chosen": None, "determined": False, "because": ["no form could be fitted"], "psi": None}
    chosen = min(scored, key=lambda f: forms[f]["held_out"])  # PLATEAU first: the simpler form wins a tie
    fitted: Fit = forms[chosen]["fit"]
    rounds_fits = bootstrap(curves, fitted, rounds)
    good = [b for b in rounds_fits if b is not None]
    widest = max(weights, key=weights.get)

    observed = {n: _dense_mean(curves.take(curves.network == n)) for n in curves.networks}

    def boundary_sparsity(f: Fit, width: float, network: int) -> float | None:
        # the verdict compares a level with the measured dense model, not with the fitted plateau: the
        # threshold (1 + δ) times the measured dense error, as a rise over the fit's own e_np
        threshold = (observed[network] or f.dense[network]) * (1 + delta)
        density = f.boundary_density(width, f.dense[network], threshold / f.dense[network] - 1)
        return None if density is None else 1 - min(density, 1.0)

    networks = []
    for n in sorted(curves.networks, key=weights.get):
        width = math.sqrt(weights[n] / reference)
        mine = curves.take(curves.network == n)
        networks.append(
            {
                "network": n,
                "weights": weights[n],
                "width": width,
                "dense_error": fitted.dense[n],
                "fitted": boundary_sparsity(fitted, width, n),
                "fitted_interval": percentile_interval([boundary_sparsity(b, width, n) for b in good], confidence),
                "points": _seed_means(mine),
            }
        )
    psi_interval = percentile_interval([b.psi for b in good], confidence)
    because = []
    risen = [n for n in curves.networks if _rises(curves.take(curves.network == n), delta)]
    if len(curves.networks) < MIN_WIDTHS:
        because.append(f"{len(curves.networks)} widths (ψ needs at least {MIN_WIDTHS})")
    elif len(risen) < MIN_WIDTHS:
        because.append(
            f"only {len(risen)} of {len(curves.networks)} widths rise past their dense plateau by more than δ "
            "(the power law needs levels past it)"
        )
    if len(good) < rounds / 2:
        because.append(f"{rounds - len(good)} of {rounds} bootstrap fits failed")
    if psi_interval is None or psi_interval[1] - psi_interval[0] > MAX_PSI_INTERVAL:
        because.append(f"the interval of ψ is wider than {MAX_PSI_INTERVAL:g}")
    determined = not because
    noise = deviation(curves, fitted)
    target_width = out["target"]["width"]
    out["target"].update(
        sparsity=boundary_sparsity(fitted, target_width, widest) if determined else None,
        interval=percentile_interval([boundary_sparsity(b, target_width, widest) for b in good], confidence),
        dense_error_of=widest,
    )
    return {
        **out,
        "chosen": chosen,
        "determined": determined,
        "because": because,
        "psi": fitted.psi if determined else None,
        "psi_interval": psi_interval,
        "k": 1 - fitted.psi / 2 if determined else None,
        "k_interval": None if psi_interval is None else [1 - psi_interval[1] / 2, 1 - psi_interval[0] / 2],
        "fit": {"shared": fitted.shared, "dense": {str(n): v for n, v in fitted.dense.items()}},
        "deviation": noise[0],
        "seed_noise": noise[1],
        "bootstrap": {"rounds": rounds, "failed": rounds - len(good)},
        "networks": networks,
    }


def _seed_means(curves: Curves) -> list[list[float]]:
    """(density, mean over seeds) of each level, densest first: the figure's points."""
    points = []
    for level in sorted({int(v) for v in curves.level}):
        here = curves.level == level
        points.append([float(curves.density[here][0]), float(curves.error[here].mean())])
    return sorted(points, reverse=True)


def _dense_mean(curves: Curves) -> float | None:
    dense = curves.error[curves.density >= 1]
    return float(dense.mean()) if len(dense) else None


def _rises(curves: Curves, delta: float) -> bool:
    """Whether some level's seed mean lies more than δ above the network's dense mean."""
    dense = _dense_mean(curves)
    if dense is None:
        return False
    return any(mean > (1 + delta) * dense for density, mean in _seed_means(curves) if density < 1)


__all__ = [
    "JOINT",
    "MAX_PSI_INTERVAL",
    "MIN_WIDTHS",
    "PLATEAU",
    "Curves",
    "Fit",
    "bootstrap",
    "deviation",
    "fit",
    "held_out_error",
    "law_of",
    "percentile_interval",
    "resample",
]
