"""The live view (``[view]``): annotated MJPEG streams of the sources over HTTP (README "Live view")."""

from __future__ import annotations

from collections.abc import Iterable

from .annotate import Regions

__all__ = ["Regions", "regions_by_source"]


def regions_by_source(zones: Iterable, lines: Iterable) -> dict[str, Regions]:
    """A config's ``[[zones]]`` and ``[[lines]]`` grouped per source, for drawing."""
    grouped: dict[str, tuple[list, list]] = {}
    for zone in zones:
        grouped.setdefault(zone.source, ([], []))[0].append(zone)
    for line in lines:
        grouped.setdefault(line.source, ([], []))[1].append(line)
    return {source: Regions(tuple(z), tuple(l)) for source, (z, l) in grouped.items()}
