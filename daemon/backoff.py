"""Exponential backoff with jitter, so a fleet of cameras that drop together do not reconnect in lockstep."""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Delays ``initial * 2**n`` capped at ``maximum``, each scaled by a random factor in [0.5, 1]
    ("equal jitter": never less than half the nominal delay, so a flapping camera is not hammered)."""

    def __init__(self, initial_s: float, maximum_s: float, rng: random.Random | None = None):
        self.initial_s = initial_s
        self.maximum_s = maximum_s
        self.attempts = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        nominal = min(self.maximum_s, self.initial_s * (2 ** min(self.attempts, 62)))
        self.attempts += 1
        return nominal * (0.5 + 0.5 * self._rng.random())

    def reset(self) -> None:
        self.attempts = 0
