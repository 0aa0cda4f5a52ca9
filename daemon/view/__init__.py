"""The live view (``[view]``): annotated MJPEG streams of the sources over HTTP (README "Live view")."""

from __future__ import annotations

from collections.abc import Iterable

from ..analyticsconfig import by_source
from .annotate import Regions

__all__ = ["Regions", "regions_by_source"]


def regions_by_source(zones: Iterable, lines: Iterable) -> dict[str, Regions]:
    """A config's ``[[zones]]`` and ``[[lines]]`` grouped per source, for drawing."""
    zones, lines = by_source(zones), by_source(lines)
    return {source: Regions(tuple(zones.get(source, ())), tuple(lines.get(source, ()))) for source in zones.keys() | lines.keys()}
