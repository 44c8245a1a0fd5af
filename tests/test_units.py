"""utils/units.py: one way to write a duration."""

from ddpm_lottery.utils.units import duration


def test_a_duration_reads_in_the_unit_that_suits_it():
    assert duration(90) == "1.5 min"
    assert duration(3600 * 38.3) == "38.3 h"
    assert duration(3600 * 60) == "60 h (2.5 days)"
