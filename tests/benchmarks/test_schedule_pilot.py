"""Tests of benchmarks/schedule_pilot.py: the pre-registered schedule rule on curves with known answers."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import schedule_pilot as pilot  # noqa: E402


def test_moving_average_is_trailing_and_nan_before_a_full_window():
    avg = pilot.moving_average([1, 2, 3, 4, 5], 2)
    assert np.isnan(avg[0])
    np.testing.assert_allclose(avg[1:], [1.5, 2.5, 3.5, 4.5])
    assert np.isnan(pilot.moving_average([1.0, 2.0], 3)).all()
    with pytest.raises(ValueError, match="window"):
        pilot.moving_average([1.0], 0)


def test_schedule_levels_off_at_the_first_stable_step_rounded_up_to_an_epoch():
    # a ramp 0 -> 4 over 1000 steps, then flat: with a 100-step window the average is flat from step 1100 on;
    # before that it climbs 0.4 per 100 steps, more than 5 % over 200 steps until the ramp's last stretch
    lam = np.concatenate([np.linspace(0.0, 4.0, 1000), np.full(1500, 4.0)])
    res = pilot.schedule_length(lam, window=100, horizon=200, tolerance=0.05, steps_per_epoch=25, cap_steps=3000)
    assert res["reason"] == "levelled"
    s = res["levelled_at_step"]
    avg = pilot.moving_average(lam, 100)
    # the rule holds at s and fails one step earlier
    assert np.max(np.abs(avg[s : s + 200] - avg[s - 1])) < 0.05 * avg[s - 1]
    assert np.max(np.abs(avg[s - 1 : s + 199] - avg[s - 2])) >= 0.05 * avg[s - 2]
    assert 800 < s < 1100
    assert res["steps"] % 25 == 0 and res["steps"] - 25 < s <= res["steps"]
    assert res["epochs"] == res["steps"] // 25


def test_schedule_is_the_cap_when_the_average_keeps_moving_or_the_curve_is_short():
    rising = np.linspace(0.1, 5.0, 3000)
    res = pilot.schedule_length(rising, steps_per_epoch=25, cap_steps=3000)
    assert res["reason"] == "cap" and res["levelled_at_step"] is None
    assert (res["steps"], res["epochs"]) == (3000, 120)
    short = pilot.schedule_length(np.ones(250), window=100, horizon=200, steps_per_epoch=30, cap_steps=100)
    assert short["reason"] == "cap" and short["steps"] == 120  # cap rounded up to whole epochs
    with pytest.raises(ValueError, match="tolerance"):
        pilot.schedule_length(rising, tolerance=0.0)


def test_a_flat_curve_levels_off_as_soon_as_the_window_is_full():
    res = pilot.schedule_length(np.full(400, 5.0), window=100, horizon=200, steps_per_epoch=10, cap_steps=3000)
    assert (res["levelled_at_step"], res["steps"], res["epochs"]) == (100, 100, 10)
