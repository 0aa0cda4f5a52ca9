"""Vectorised geometry for zones and lines: anchor points of boxes, points in polygons, sides of segments.

Everything takes many points at once (and, for the ``*s`` forms, many regions at once) because it runs on
the serving path for every frame: a numpy call costs about a microsecond whatever its size, so one call
for all zones of a source is far cheaper than one call per zone, let alone one per object.

Coordinates are image pixels, x to the right and y *down*. Region configs may be normalised (0..1 of the
frame); :func:`scale_points` turns them into pixels of the current frame, so a source whose resolution
changes keeps its zones where they were drawn relative to the picture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

__all__ = [
    "ANCHOR_INDEX", "anchor_points", "all_anchors", "scale_points",
    "Polygons", "points_in_polygon", "points_in_polygons",
    "Segments", "segment_side", "segment_sides",
]

Anchor = Literal["bottom_center", "center", "top_center"]
#: The row of each anchor in :func:`all_anchors`' result.
ANCHOR_INDEX: dict[str, int] = {"bottom_center": 0, "center": 1, "top_center": 2}


def all_anchors(boxes: np.ndarray) -> np.ndarray:
    """[3, N, 2]: the bottom centre, centre and top centre (rows as :data:`ANCHOR_INDEX`) of [N, 4] xyxy
    boxes. All three at once: that is cheaper than asking per region which one it needs."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    out = np.empty((3, boxes.shape[0], 2))
    out[:, :, 0] = (boxes[:, 0] + boxes[:, 2]) * 0.5
    out[0, :, 1] = boxes[:, 3]
    out[1, :, 1] = (boxes[:, 1] + boxes[:, 3]) * 0.5
    out[2, :, 1] = boxes[:, 1]
    return out


def anchor_points(boxes: np.ndarray, anchor: Anchor) -> np.ndarray:
    """[N, 2]: one anchor of [N, 4] xyxy boxes. Bottom centre is where a standing object touches the
    ground, the point that should be in a floor zone or cross a floor line."""
    return all_anchors(boxes)[ANCHOR_INDEX[anchor]]


def scale_points(points: Sequence[Sequence[float]], coordinates: Literal["pixels", "normalized"], width: int, height: int) -> np.ndarray:
    """[K, 2] pixel coordinates of config points: normalised ones times the frame's width and height (at
    use, since frames can change size), pixel ones as they are."""
    array = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if coordinates == "normalized":
        array = array * np.array([float(width), float(height)])
    return array


@dataclass(frozen=True, slots=True)
class Polygons:
    """Several polygons' edges, flattened so that one numpy pass tests points against all of them.

    Edge ``e`` goes from (x1[e], y1[e]) to the next vertex, whose y is y2[e]; ``slope`` is dx/dy (0 for
    horizontal edges, which the half-open test never uses); ``owner[e]`` is its polygon and ``starts``
    the first edge of each polygon (for ``reduceat``)."""

    x1: np.ndarray
    y1: np.ndarray
    y2: np.ndarray
    slope: np.ndarray
    owner: np.ndarray
    starts: np.ndarray

    @classmethod
    def build(cls, polygons: Sequence[np.ndarray]) -> "Polygons":
        """From [M_i, 2] vertex arrays (closed implicitly; at least 3 vertices each)."""
        if not polygons:
            raise ValueError("no polygons")
        starts, owners, first, second = [], [], [], []
        for index, polygon in enumerate(polygons):
            vertices = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
            if len(vertices) < 3:
                raise ValueError("a polygon needs at least 3 vertices")
            starts.append(sum(len(edges) for edges in first))
            first.append(vertices)
            second.append(np.roll(vertices, -1, axis=0))
            owners.append(np.full(len(vertices), index, dtype=np.intp))
        a, b = np.concatenate(first), np.concatenate(second)
        dy = b[:, 1] - a[:, 1]
        slope = np.divide(b[:, 0] - a[:, 0], dy, out=np.zeros_like(dy), where=dy != 0)
        return cls(a[:, 0].copy(), a[:, 1].copy(), b[:, 1].copy(), slope, np.concatenate(owners), np.asarray(starts, dtype=np.intp))

    def __len__(self) -> int:
        return len(self.starts)


def points_in_polygons(points: np.ndarray, polygons: Polygons) -> np.ndarray:
    """[P, N] bool: whether point ``n`` of ``points[p]`` ([P, N, 2]: one point set per polygon, since
    regions may use different anchors) is inside polygon ``p``.

    Even-odd rule (crossing number): a ray from the point towards +x crosses the boundary an odd number
    of times. Edges are half-open in y (an edge covers y1 <= y < y2 or y2 <= y < y1) and a crossing
    counts only strictly right of the point, so a point exactly on the boundary is decided the way
    pixels are rasterised: for an axis-aligned rectangle [x0, x1) x [y0, y1) the left and top edges
    are inside, the right and bottom edges outside. Two zones sharing an edge therefore never both
    contain a point on it (up to floating-point rounding on slanted edges), and no point on an edge is
    counted twice at a vertex. Self-intersecting polygons follow even-odd (overlaps are holes)."""
    per_edge = points[polygons.owner]  # [E, N, 2]
    px, py = per_edge[..., 0], per_edge[..., 1]
    y1 = polygons.y1[:, None]
    spans = (y1 > py) != (polygons.y2[:, None] > py)
    crossing_x = polygons.x1[:, None] + (py - y1) * polygons.slope[:, None]
    hits = spans & (px < crossing_x)
    return np.logical_xor.reduceat(hits, polygons.starts, axis=0)


def points_in_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """[N] bool: whether each of [N, 2] points is inside one polygon ([M, 2]); rules as
    :func:`points_in_polygons`."""
    points = np.asarray(points, dtype=np.float64).reshape(1, -1, 2)
    return points_in_polygons(points, Polygons.build([polygon]))[0]


@dataclass(frozen=True, slots=True)
class Segments:
    """Several segments p1 -> p2 ([L, 2] each), with what the side test needs precomputed."""

    p1: np.ndarray
    direction: np.ndarray
    inverse_length2: np.ndarray

    @classmethod
    def build(cls, segments: Sequence[np.ndarray]) -> "Segments":
        """From [2, 2] arrays ``[[x1, y1], [x2, y2]]`` with distinct points."""
        if not segments:
            raise ValueError("no segments")
        ends = np.asarray(segments, dtype=np.float64).reshape(-1, 2, 2)
        direction = ends[:, 1] - ends[:, 0]
        length2 = np.einsum("ij,ij->i", direction, direction)
        if np.any(length2 == 0):
            raise ValueError("a segment's two points are the same")
        return cls(ends[:, 0].copy(), direction, 1.0 / length2)

    def __len__(self) -> int:
        return len(self.p1)


def segment_sides(points: np.ndarray, segments: Segments) -> tuple[np.ndarray, np.ndarray]:
    """For [L, N, 2] points (one set per segment): ``side`` [L, N] int8 and ``within`` [L, N] bool.

    ``side`` is +1 right of p1 -> p2, -1 left, 0 exactly on its line, *as seen on screen* (y down): the
    z component of (p2 - p1) x (point - p1) is positive for points on the right when y points down
    (it would be the left with y up). For p1 = (0, 0), p2 = (10, 0), the point (5, 5), below the line
    on screen, is on the right: looking from p1 to p2 means looking right, and the right hand points
    down. This matches LineConfig: ``forward`` goes from side -1 to side +1.

    ``within``: the point's perpendicular projection falls on the segment (0 <= t <= 1 along it, ends
    included), i.e. an object there can pass *through* the segment rather than its infinite extension."""
    relative = points - segments.p1[:, None, :]
    dx, dy = segments.direction[:, None, 0], segments.direction[:, None, 1]
    rx, ry = relative[..., 0], relative[..., 1]
    side = np.sign(dx * ry - dy * rx).astype(np.int8)
    t = (rx * dx + ry * dy) * segments.inverse_length2[:, None]
    return side, (t >= 0.0) & (t <= 1.0)


def segment_side(points: np.ndarray, p1: Sequence[float], p2: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """``side`` [N] and ``within`` [N] of [N, 2] points for one segment p1 -> p2; see :func:`segment_sides`."""
    points = np.asarray(points, dtype=np.float64).reshape(1, -1, 2)
    side, within = segment_sides(points, Segments.build([np.array([p1, p2], dtype=np.float64)]))
    return side[0], within[0]
