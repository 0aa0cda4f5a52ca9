"""Constant-velocity Kalman filter on (cx, cy, aspect, h), the one SORT and ByteTrack use, for all of a
tracker's tracks at once.

The state per track is ``[cx, cy, a, h, vcx, vcy, va, vh]`` (a = w / h, velocities per frame); the
measurement is the detection's ``[cx, cy, a, h]``. Noise scales with the box height, so a near and a far
object are equally certain relative to their size (ByteTrack's weights: 1/20 of h for position, 1/160
for velocity).

Why no 8x8 matrices: the motion model, the measurement and every noise term treat the four coordinates
independently (each coordinate's position depends on its own velocity only, all noise is diagonal) and a
track starts with a diagonal covariance, so the covariance stays four independent 2x2 blocks
(position, position-velocity, velocity) per track, exactly. Keeping just those three numbers per
coordinate makes each step a dozen element-wise operations on [K, 4] arrays for all K tracks — the
same result as ByteTrack's ``KalmanFilter`` with its 8x8 products and Cholesky solves, at a fraction of
the cost: this runs on every frame of every source.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BatchKalman", "xyxy_to_xyah", "xyah_to_xyxy"]

_POSITION_WEIGHT = 1.0 / 20
_VELOCITY_WEIGHT = 1.0 / 160
_MIN_HEIGHT = 1e-3
# Noise of the aspect ratio, not scaled by the height (ByteTrack's values, as variances).
_ASPECT_PROCESS_POS, _ASPECT_PROCESS_VEL, _ASPECT_MEASURE = 1e-4, 1e-10, 1e-2
_ASPECT_INIT_POS, _ASPECT_INIT_VEL = 1e-4, 1e-10


def xyxy_to_xyah(boxes: np.ndarray) -> np.ndarray:
    """[N, 4] x1, y1, x2, y2 -> [N, 4] cx, cy, w / h, h (a zero height gives a tiny one, not a division by zero)."""
    boxes = np.asarray(boxes, dtype=np.float64)
    w = boxes[:, 2] - boxes[:, 0]
    h = np.maximum(boxes[:, 3] - boxes[:, 1], _MIN_HEIGHT)
    return np.stack([(boxes[:, 0] + boxes[:, 2]) * 0.5, (boxes[:, 1] + boxes[:, 3]) * 0.5, w / h, h], axis=1)


def xyah_to_xyxy(xyah: np.ndarray) -> np.ndarray:
    """[N, 4] cx, cy, a, h -> [N, 4] x1, y1, x2, y2; a coasting track whose height or aspect drifted below
    zero comes out as a tiny box, never an inverted one."""
    h = np.maximum(xyah[:, 3], _MIN_HEIGHT)
    half_w = np.maximum(xyah[:, 2], 0.0) * h * 0.5
    half_h = h * 0.5
    return np.stack([xyah[:, 0] - half_w, xyah[:, 1] - half_h, xyah[:, 0] + half_w, xyah[:, 1] + half_h], axis=1)


class BatchKalman:
    """The filter state of K tracks, in row order; the tracker keeps its own per-track records in the
    same order and calls :meth:`keep` / :meth:`add` alongside its own changes.

    ``means`` [K, 8]; ``blocks`` [K, 3, 4]: per coordinate (cx, cy, a, h) its covariance block, as the
    position variance (``[:, 0]``), the position-velocity covariance (``[:, 1]``) and the velocity
    variance (``[:, 2]``)."""

    __slots__ = ("means", "blocks")

    def __init__(self) -> None:
        self.means = np.zeros((0, 8))
        self.blocks = np.zeros((0, 3, 4))

    def __len__(self) -> int:
        return self.means.shape[0]

    def add(self, measurements: np.ndarray) -> None:
        """New tracks at the end, from [M, 4] xyah measurements: position as measured, velocity zero and
        uncertain (ten times the per-frame process noise), no correlation between them yet."""
        m = np.asarray(measurements, dtype=np.float64).reshape(-1, 4)
        if m.shape[0] == 0:
            return
        h2 = m[:, 3:4] ** 2
        blocks = np.zeros((m.shape[0], 3, 4))
        blocks[:, 0] = (2 * _POSITION_WEIGHT) ** 2 * h2
        blocks[:, 0, 2] = _ASPECT_INIT_POS
        blocks[:, 2] = (10 * _VELOCITY_WEIGHT) ** 2 * h2
        blocks[:, 2, 2] = _ASPECT_INIT_VEL
        self.means = np.concatenate([self.means, np.concatenate([m, np.zeros_like(m)], axis=1)])
        self.blocks = np.concatenate([self.blocks, blocks])

    def keep(self, mask: np.ndarray) -> None:
        """Drop the rows where ``mask`` is False (tracks that ended or were discarded)."""
        self.means = self.means[mask]
        self.blocks = self.blocks[mask]

    def predict(self, freeze_height: np.ndarray | None = None) -> None:
        """Advance every track one frame. ``freeze_height`` [K] bool: tracks whose height velocity is zeroed
        first (ByteTrack does so for lost tracks, so a box coasting for many frames does not shrink to
        nothing or grow without bound)."""
        if len(self) == 0:
            return
        if freeze_height is not None and freeze_height.any():
            self.means[freeze_height, 7] = 0.0
        h2 = self.means[:, 3:4] ** 2
        self.means[:, :4] += self.means[:, 4:]
        # [[P, C], [C, V]] -> F [[P, C], [C, V]] F^T + Q, F = [[1, 1], [0, 1]]: P + 2C + V, C + V, V.
        blocks = self.blocks
        p, c, v = blocks[:, 0], blocks[:, 1], blocks[:, 2]  # views: updated in place, in this order
        p += c
        p += c
        p += v
        c += v
        p += _POSITION_WEIGHT ** 2 * h2
        v += _VELOCITY_WEIGHT ** 2 * h2
        # The aspect's noise does not scale with the height: swap in its constants.
        p[:, 2] += _ASPECT_PROCESS_POS - _POSITION_WEIGHT ** 2 * h2[:, 0]
        v[:, 2] += _ASPECT_PROCESS_VEL - _VELOCITY_WEIGHT ** 2 * h2[:, 0]

    def update(self, rows: np.ndarray, measurements: np.ndarray) -> None:
        """Correct the tracks at ``rows`` [M] (distinct) with their matched measurements [M, 4] (xyah)."""
        if len(rows) == 0:
            return
        z = np.asarray(measurements, dtype=np.float64).reshape(-1, 4)
        mean = self.means[rows]
        blocks = self.blocks[rows]
        p, c, v = blocks[:, 0], blocks[:, 1], blocks[:, 2]
        r = _POSITION_WEIGHT ** 2 * mean[:, 3:4] ** 2
        s = p + r  # the innovation variance per coordinate
        s[:, 2] += _ASPECT_MEASURE - r[:, 0]
        gain_pos = p / s
        gain_vel = c / s
        innovation = z - mean[:, :4]
        mean[:, :4] += gain_pos * innovation
        mean[:, 4:] += gain_vel * innovation
        # P' = P - K H P per block, H P = [P, C], K = [P, C] / S; v and c before c and p change.
        v -= gain_vel * c
        c -= gain_pos * c
        p -= gain_pos * p
        self.means[rows] = mean
        self.blocks[rows] = blocks

    def boxes(self) -> np.ndarray:
        """[K, 4] predicted (or corrected) boxes, x1, y1, x2, y2."""
        return xyah_to_xyxy(self.means[:, :4])
