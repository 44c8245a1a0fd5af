"""findings/law.py: the joint form and the plateau power law, fitted to curves made from known constants."""

import math

import numpy as np
import pytest

from ddpm_lottery.findings.law import JOINT, PLATEAU, Curves, Fit, bootstrap, deviation, fit, held_out_error


def joint_error(width, density, e_np, e_up=1.0, g=2.0, p=0.05, psi=1.0):
    """Rosenfeld et al.'s joint form, written with the imaginary unit as the paper writes it."""
    x = width**psi * density
    return e_np * abs((x - 1j * p * (e_up / e_np) ** (1 / g)) / (x - 1j * p)) ** g


def synthetic(widths=(1.0, 2.0, 4.0), seeds=2, noise=0.02, densities=None, seed=0, **constants):
    """Curves from known constants: each width's dense error 0.1 / w^0.3, levels 20 % a round, log-normal
    seed noise."""
    rng = np.random.default_rng(seed)
    densities = densities or [0.8**k for k in range(20)]
    rows = []
    for network, width in enumerate(widths):
        e_np = 0.1 / width**0.3
        for s in range(seeds):
            for level, density in enumerate(densities):
                value = joint_error(width, density, e_np, **constants) * math.exp(rng.normal(0, noise))
                rows.append((width, density, value, network, s, level))
    columns = list(zip(*rows))
    kinds = (float, float, float, int, int, int)
    return Curves(*(np.array(c, dtype=t) for c, t in zip(columns, kinds)))


def test_the_joint_form_recovers_the_constants_it_was_made_from():
    fitted = fit(synthetic(psi=1.3), JOINT)
    assert fitted.psi == pytest.approx(1.3, abs=0.1)
    assert fitted.shared["g"] == pytest.approx(2.0, rel=0.2)
    assert fitted.shared["e_up"] == pytest.approx(1.0, rel=0.2)
    assert fitted.dense[2] == pytest.approx(0.1 / 4**0.3, rel=0.05)
    mean_deviation, seed_noise = deviation(synthetic(psi=1.3), fitted)
    assert mean_deviation < 2 * seed_noise  # within the noise it was made with, as Rosenfeld's fit is


@pytest.mark.parametrize("form", [JOINT, PLATEAU])
def test_the_boundary_is_where_the_fitted_error_is_delta_above_its_plateau(form):
    fitted = fit(synthetic(), form)
    for width in (1.0, 3.0):
        density = fitted.boundary_density(width, fitted.dense[0], 0.1)
        value = math.exp(fitted.log_error(np.array([width]), np.array([density]), np.array([0]))[0])
        assert value == pytest.approx(1.1 * fitted.dense[0], rel=1e-6)
    # a threshold under the plateau puts the boundary at the dense model
    assert fitted.boundary_density(1.0, fitted.dense[0], -0.01) == 1.0


def test_a_joint_form_with_a_high_plateau_below_the_threshold_has_no_boundary():
    fitted = Fit(JOINT, {"e_up": 0.105, "g": 2.0, "p": 0.05, "psi": 1.0}, {0: 0.1}, 0.0)
    assert fitted.boundary_density(1.0, 0.1, 0.1) is None


def test_held_out_error_prefers_the_form_the_curves_were_made_from():
    # levels down to 0.8^19 = 1.4 % reach the high plateau, which the plateau power law does not have
    curves = synthetic(widths=(1.0, 2.0), seeds=1, noise=0.01)
    assert held_out_error(curves, JOINT) < held_out_error(curves, PLATEAU)


def test_the_bootstrap_is_deterministic_and_refits_each_round():
    curves = synthetic(seeds=2)
    fitted = fit(curves, PLATEAU)
    first = [b.psi for b in bootstrap(curves, fitted, 5)]
    assert first == [b.psi for b in bootstrap(curves, fitted, 5)]
    assert len(set(first)) > 1  # each round resampled, not the same curves refitted
