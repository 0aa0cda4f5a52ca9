"""The benchmark's spread rule (daemon/bench/rounds.py) on given round figures."""

from __future__ import annotations

import pytest

from daemon.bench.rounds import judge_rounds, relative_spread


def test_relative_spread_is_range_over_median():
    assert relative_spread([36.0, 37.0, 40.0]) == pytest.approx(4.0 / 37.0)
    assert relative_spread([35.0]) is None


def test_tight_rounds_far_enough_from_the_target_are_trusted():
    # Like the README's run: ratio 0.954, 5.7 % from the target, rounds within about 1 % each.
    verdict = judge_rounds([36.5, 36.7, 36.9], [34.8, 35.0, 35.2], target=0.9)
    assert verdict.ratio == pytest.approx(35.0 / 36.7)
    assert verdict.warning is None


def test_spread_larger_than_the_distance_to_the_target_warns():
    # ratio 0.905, 0.6 % above the target, rounds 5 % apart: the verdict is noise.
    verdict = judge_rounds([36.0, 37.0, 38.0], [33.0, 33.5, 34.0], target=0.9)
    assert verdict.warning is not None and "within noise" in verdict.warning


def test_the_two_sides_spreads_add_up():
    # 4 % on each side, each below the 6.5 % distance to the target, together above it.
    verdict = judge_rounds([98.0, 100.0, 102.0], [94.0, 96.0, 98.0], target=0.9)
    assert verdict.engine_spread == pytest.approx(0.04) and verdict.pipeline_spread == pytest.approx(4.0 / 96.0)
    assert abs(verdict.ratio - 0.9) / verdict.ratio > max(verdict.engine_spread, verdict.pipeline_spread)
    assert verdict.warning is not None and "within noise" in verdict.warning


def test_a_noisy_ratio_far_from_the_target_still_warns():
    # ratio 0.33 is clearly below 0.9, but rounds 28 % and 33 % apart make the figure itself meaningless.
    verdict = judge_rounds([30.0, 36.0, 40.0], [10.0, 12.0, 14.0], target=0.9)
    assert verdict.warning is not None and "not reproducible" in verdict.warning


def test_a_single_round_cannot_be_judged():
    verdict = judge_rounds([36.7], [35.0], target=0.9)
    assert verdict.engine_spread is None and verdict.warning is not None and "--rounds" in verdict.warning
