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
# The same constants arranged for whole-block steps: per track [position, velocity] noise weights
# (times h^2), the aspect's process noise, and which gain and block each block's correction takes.
_PROCESS_WEIGHTS = np.array([_POSITION_WEIGHT ** 2, _VELOCITY_WEIGHT ** 2]).reshape(2, 1, 1)
_ASPECT_PROCESS = np.array([[_ASPECT_PROCESS_POS], [_ASPECT_PROCESS_VEL]])
_GAIN_OF_BLOCK = np.array([0, 0, 1])  # P and C take P / S, V takes C / S
_FACTOR_OF_BLOCK = np.array([0, 1, 1])  # ... times P, C and C


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
    variance (``[:, 2]``). The blocks are stored block-major ([3, K, 4], ``blocks`` is a view of it), so
    that each of P, C and V is one contiguous [K, 4] array: the steps below run on every frame, and
    numpy is about twice as fast on contiguous operands as on the strided slices of a [K, 3, 4] array."""

    __slots__ = ("means", "_cov")

    def __init__(self) -> None:
        self.means = np.zeros((0, 8))
        self._cov = np.zeros((3, 0, 4))

    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def blocks(self) -> np.ndarray:
        """[K, 3, 4] covariance blocks per track (a view: for inspection and tests)."""
        return self._cov.transpose(1, 0, 2)

    def add(self, measurements: np.ndarray) -> None:
        """New tracks at the end, from [M, 4] xyah measurements: position as measured, velocity zero and
        uncertain (ten times the per-frame process noise), no correlation between them yet."""
        m = np.asarray(measurements, dtype=np.float64).reshape(-1, 4)
        if m.shape[0] == 0:
            return
        h2 = m[:, 3:4] ** 2
        cov = np.zeros((3, m.shape[0], 4))
        cov[0] = (2 * _POSITION_WEIGHT) ** 2 * h2
        cov[0, :, 2] = _ASPECT_INIT_POS
        cov[2] = (10 * _VELOCITY_WEIGHT) ** 2 * h2
        cov[2, :, 2] = _ASPECT_INIT_VEL
        self.means = np.concatenate([self.means, np.concatenate([m, np.zeros_like(m)], axis=1)])
        self._cov = np.concatenate([self._cov, cov], axis=1)

    def keep(self, mask: np.ndarray) -> None:
        """Drop the rows where ``mask`` is False (tracks that ended or were discarded)."""
        self.means = self.means[mask]
        self._cov = self._cov[:, mask]

    def predict(self, freeze_height: np.ndarray | None = None, rows: np.ndarray | None = None) -> None:
        """Advance tracks one frame: every track, or those at ``rows`` [M] (distinct indices: the tracks
        of the sources that have a frame in this step, when one tracker holds several sources).
        ``freeze_height`` [K] bool over all tracks: tracks whose height velocity is zeroed first
        (ByteTrack does so for lost tracks, so a box coasting for many frames does not shrink to nothing
        or grow without bound)."""
        if len(self) == 0 or (rows is not None and len(rows) == 0):
            return
        if rows is None:
            _predict(self.means, self._cov, freeze_height)
            return
        means, cov = self.means[rows], self._cov[:, rows]
        _predict(means, cov, None if freeze_height is None else freeze_height[rows])
        self.means[rows], self._cov[:, rows] = means, cov

    def update(self, rows: np.ndarray | None, measurements: np.ndarray) -> None:
        """Correct the tracks at ``rows`` [M] (distinct; None: every track, in order) with their matched
        measurements [M, 4] (xyah). None is the common case (each track matched) and works in place,
        without gathering the rows and scattering them back."""
        if rows is not None and len(rows) == 0:
            return
        z = np.asarray(measurements, dtype=np.float64).reshape(-1, 4)
        mean = self.means if rows is None else self.means[rows]
        cov = self._cov if rows is None else self._cov[:, rows]
        r = _POSITION_WEIGHT ** 2 * mean[:, 3:4] ** 2
        s = cov[0] + r  # the innovation variance per coordinate
        s[:, 2] += _ASPECT_MEASURE - r[:, 0]
        gains = cov[:2] / s  # [2, M, 4]: P / S for the position, C / S for the velocity
        innovation = z - mean[:, :4]
        motion = mean.reshape(-1, 2, 4)  # a view: [position, velocity] per track
        motion += (gains * innovation).swapaxes(0, 1)
        # P' = P - K H P per block, H P = [P, C], K = [P, C] / S: [P, C, V] -= [P/S P, P/S C, C/S C],
        # the right side computed from the blocks before they change.
        cov -= gains[_GAIN_OF_BLOCK] * cov[_FACTOR_OF_BLOCK]
        if rows is not None:
            self.means[rows] = mean
            self._cov[:, rows] = cov

    def boxes(self) -> np.ndarray:
        """[K, 4] predicted (or corrected) boxes, x1, y1, x2, y2."""
        return xyah_to_xyxy(self.means[:, :4])


def _predict(means: np.ndarray, cov: np.ndarray, freeze_height: np.ndarray | None) -> None:
    """:meth:`BatchKalman.predict` on ``means`` [K, 8] and ``cov`` [3, K, 4], in place."""
    if freeze_height is not None and freeze_height.any():
        means[freeze_height, 7] = 0.0
    h2 = means[:, 3:4] ** 2
    means[:, :4] += means[:, 4:]
    # [[P, C], [C, V]] -> F [[P, C], [C, V]] F^T + Q, F = [[1, 1], [0, 1]]: P + 2C + V, C + V, V, summed
    # as ((P + C) + C) + V; two of the blocks at a time where the order allows (numpy reads
    # overlapping inputs before writing).
    cov[0] += cov[1]
    cov[:2] += cov[1:]  # (P + C) + C, and C + V
    cov[0] += cov[2]
    noise = _PROCESS_WEIGHTS * h2  # [2, K, 1]: the position and the velocity noise
    cov[::2] += noise
    # The aspect's noise does not scale with the height: swap in its constants.
    cov[::2, :, 2] += _ASPECT_PROCESS - noise[:, :, 0]
