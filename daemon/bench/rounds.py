"""When a benchmark's ratio of two measured sides can be trusted, judged from the spread of its rounds.

``trtstream bench cpu`` alternates engine-only and pipeline rounds and reports the ratio of their medians
against a target (pipeline >= 0.9 x engine-only). The medians hide how much the rounds disagreed; this
module says, in one place, when they disagreed too much for the ratio to mean anything.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Sequence

__all__ = ["MAX_SPREAD", "RoundsVerdict", "judge_rounds", "relative_spread"]

MAX_SPREAD = 0.10  # the ratio is quoted to three digits; beyond 10 % uncertainty even its first is in doubt


@dataclass(frozen=True)
class RoundsVerdict:
    """The ratio of the medians, each side's relative spread, and a one-line warning (None: trustworthy)."""

    ratio: float
    engine_spread: float | None
    pipeline_spread: float | None
    warning: str | None


def relative_spread(values: Sequence[float]) -> float | None:
    """(max - min) / median of one side's rounds; None for a single round, which shows no spread.
    The range rather than a standard deviation: with the 3 rounds a benchmark can afford, a standard
    deviation is no better estimated, and the range is the worst case a reader could have drawn."""
    if len(values) < 2:
        return None
    return (max(values) - min(values)) / statistics.median(values)


def judge_rounds(engine: Sequence[float], pipeline: Sequence[float], target: float, max_spread: float = MAX_SPREAD) -> RoundsVerdict:
    """Judge ``median(pipeline) / median(engine)`` against ``target`` by the rounds' spread.

    The rule: the ratio divides two measurements, so its relative uncertainty is (to first order, in
    the worst case) the sum of their relative spreads, ``u = spread(engine) + spread(pipeline)``. Warn when

    * ``u >= |ratio - target| / ratio``: the rounds disagree by more than the ratio's distance from its
      target, so whether the target is met is decided by noise, not by the code measured; or
    * ``u > max_spread``: the ratio itself is not reproducible (another load on the machine, throttling,
      too few frames per round), however far from the target it lies.

    One round has no measurable spread; that is a warning too, since nothing shows the ratio is stable.
    Either side's spread alone is not enough: two sides at 4 % each can still move the ratio by 8 %.
    """
    ratio = statistics.median(pipeline) / statistics.median(engine)
    engine_spread, pipeline_spread = relative_spread(engine), relative_spread(pipeline)
    return RoundsVerdict(ratio, engine_spread, pipeline_spread, _warning(ratio, engine_spread, pipeline_spread, target, max_spread))


def _warning(ratio: float, engine_spread: float | None, pipeline_spread: float | None, target: float, max_spread: float) -> str | None:
    if engine_spread is None or pipeline_spread is None:
        return f"one round shows no spread between rounds, so the ratio {ratio:.3f} cannot be judged (use --rounds 3 or more)"
    uncertainty = engine_spread + pipeline_spread
    distance = abs(ratio - target) / ratio
    spreads = f"rounds spread engine-only {engine_spread:.1%}, pipeline {pipeline_spread:.1%}"
    if uncertainty >= distance:
        return (f"{spreads}: together {uncertainty:.1%}, not less than the ratio's distance from its target "
                f"({ratio:.3f} vs {target}: {distance:.1%}); whether the target is met is within noise")
    if uncertainty > max_spread:
        return f"{spreads}: together {uncertainty:.1%} > {max_spread:.0%}; the ratio {ratio:.3f} is not reproducible"
    return None
