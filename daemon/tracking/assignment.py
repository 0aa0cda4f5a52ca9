"""Linear assignment for the tracker: match tracks (rows) to detections (columns) at least total cost.

Three solvers, picked once at import, best first: ``lap`` (Jonker-Volgenant, a 1.7 MB wheel, a core
dependency: wheels for x86_64 and aarch64/Jetson on CPython 3.10-3.13), SciPy's
``linear_sum_assignment`` (140 MB, present where someone installed it for other reasons) and a greedy
match in numpy (lowest cost first), so that a checkout without either still tracks. Greedy is optimal
whenever no two tracks compete for the same detections — the usual case for IoU costs — and differs only
in crowded, ambiguous frames.

``lap`` and SciPy solve the same problem: a pair costing more than ``max_cost`` is never matched, and
leaving a row and a column unmatched costs ``max_cost`` (``lap``'s ``extend_cost`` with ``cost_limit``:
the matrix extended by ``max_cost / 2`` per unmatched row or column). So both give the same matches
(up to exact ties), and a solver never pairs two rows badly to match a third.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["linear_assignment", "solve", "match_arrays", "SOLVER", "available_solvers"]

Solver = Literal["lap", "scipy", "greedy"]
Assignment = tuple[list[tuple[int, int]], list[int], list[int]]

try:
    import lap as _lap
except ImportError:  # the optional fallbacks below
    _lap = None
try:
    from scipy.optimize import linear_sum_assignment as _scipy_lsa
except ImportError:
    _scipy_lsa = None

SOLVER: Solver = "lap" if _lap is not None else "scipy" if _scipy_lsa is not None else "greedy"
"""The solver :func:`linear_assignment` uses (decided once, here: the serving path asks no questions)."""


def available_solvers() -> list[Solver]:
    """The solvers importable here, best first (``greedy`` always)."""
    names: list[Solver] = []
    if _lap is not None:
        names.append("lap")
    if _scipy_lsa is not None:
        names.append("scipy")
    names.append("greedy")
    return names


def linear_assignment(cost: np.ndarray, max_cost: float) -> Assignment:
    """``(matches, unmatched_rows, unmatched_cols)`` for ``cost`` [rows, cols]: each match ``(row, col)``
    costs at most ``max_cost``; lists in ascending order (matches by row)."""
    return solve(cost, max_cost, SOLVER)


def solve(cost: np.ndarray, max_cost: float, solver: Solver) -> Assignment:
    """:func:`linear_assignment` with a named solver (tests and benchmarks compare them)."""
    cost = np.asarray(cost, dtype=np.float64)
    rows, cols = match_arrays(cost, max_cost, solver)
    matched_rows = np.zeros(cost.shape[0], dtype=bool)
    matched_cols = np.zeros(cost.shape[1], dtype=bool)
    matched_rows[rows] = True
    matched_cols[cols] = True
    return list(zip(rows.tolist(), cols.tolist())), np.flatnonzero(~matched_rows).tolist(), np.flatnonzero(~matched_cols).tolist()


def match_arrays(cost: np.ndarray, max_cost: float, solver: Solver = SOLVER) -> tuple[np.ndarray, np.ndarray]:
    """The matches as two index arrays (rows ascending), for the tracker's per-frame path: no lists of
    tuples to build and take apart again."""
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2:
        raise ValueError(f"cost must be 2-D, got shape {cost.shape}")
    if solver not in _SOLVERS:
        raise ValueError(f"unknown solver {solver!r} (one of lap, scipy, greedy)")
    empty = np.zeros(0, dtype=np.intp)
    if cost.size == 0:
        return empty, empty
    # A cost exactly at max_cost is accepted: the limit sits a hair above it, so the tie between
    # "match at max_cost" and "leave both unmatched" (also max_cost) goes to the match.
    limit = float(max_cost) + 1e-9 * max(1.0, abs(float(max_cost)))
    allowed = cost <= limit
    if not allowed.any():
        return empty, empty
    per_row = allowed.sum(axis=1)
    per_col = allowed.sum(axis=0)
    # A pair that is the only choice of its row and of its column (objects apart: most of a frame) is in
    # every optimum, whichever solver; only the rest, the contested rows and columns, need solving.
    lone = allowed & (per_row == 1)[:, None] & (per_col == 1)[None, :]
    rows, cols = np.divmod(np.flatnonzero(lone), cost.shape[1])  # flatnonzero: 10x a 2-D nonzero
    contested_rows = np.flatnonzero(per_row > (lone.any(axis=1)))
    if len(contested_rows) == 0:
        return rows, cols
    contested_cols = np.flatnonzero(per_col > (lone.any(axis=0)))
    sub = cost[np.ix_(contested_rows, contested_cols)]
    r, c = _SOLVERS[solver](sub, limit)
    keep = sub[r, c] <= limit
    rows = np.concatenate([rows, contested_rows[r[keep]]])
    cols = np.concatenate([cols, contested_cols[c[keep]]])
    order = np.argsort(rows, kind="stable")
    return rows[order], cols[order]


def _solve_lap(cost: np.ndarray, limit: float) -> tuple[np.ndarray, np.ndarray]:
    if _lap is None:
        raise ValueError("solver 'lap' is not installed (pip install lap)")
    _, x, _ = _lap.lapjv(np.ascontiguousarray(cost), extend_cost=True, cost_limit=limit)
    rows = np.flatnonzero(x >= 0)
    return rows, x[rows].astype(np.intp)


def _solve_scipy(cost: np.ndarray, limit: float) -> tuple[np.ndarray, np.ndarray]:
    """The extended square problem ``lap`` solves: [[cost, limit/2], [limit/2, 0]], pairs above the
    limit made unreachable (no worse than leaving both unmatched, so never chosen over it)."""
    if _scipy_lsa is None:
        raise ValueError("solver 'scipy' is not installed (pip install scipy)")
    rows, cols = cost.shape
    size = rows + cols
    extended = np.full((size, size), limit / 2.0)
    extended[rows:, cols:] = 0.0
    extended[:rows, :cols] = np.where(cost <= limit, cost, limit * 2.0 + 1.0)
    row_ind, col_ind = _scipy_lsa(extended)
    keep = (row_ind < rows) & (col_ind < cols)
    return row_ind[keep], col_ind[keep]


def _solve_greedy(cost: np.ndarray, limit: float) -> tuple[np.ndarray, np.ndarray]:
    """Lowest cost first; ties broken by row, then column (a stable sort), so runs repeat exactly."""
    flat = np.flatnonzero(cost.ravel() <= limit)
    order = flat[np.argsort(cost.ravel()[flat], kind="stable")]
    cols = cost.shape[1]
    used_rows: set[int] = set()
    used_cols: set[int] = set()
    pairs_r: list[int] = []
    pairs_c: list[int] = []
    for index in order.tolist():
        r, c = divmod(index, cols)
        if r in used_rows or c in used_cols:
            continue
        used_rows.add(r)
        used_cols.add(c)
        pairs_r.append(r)
        pairs_c.append(c)
    return np.array(pairs_r, dtype=np.intp), np.array(pairs_c, dtype=np.intp)


_SOLVERS = {"lap": _solve_lap, "scipy": _solve_scipy, "greedy": _solve_greedy}
