"""The TensorRT Python API surface of one release, read from the JSON files in ``tests/data/trt-api``.

The in-repo copies are preferred; ``shared/trt`` beside the repository (where they come from) is the fallback.
Each file maps a type name to its member names; see its ``__source__`` entry for the format and provenance.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
IN_REPO = REPO / "tests" / "data" / "trt-api"
SHARED = REPO.parent / "shared" / "trt"
FILES = {"11.1": "api-11.1.json", "10.16": "api-10.16.json"}
VERSIONS = tuple(FILES)

_SEVERITY_PLACEHOLDER = "<members of ILogger.Severity>"


def surface_path(version: str) -> Path:
    for directory in (IN_REPO, SHARED):
        path = directory / FILES[version]
        if path.is_file():
            return path
    raise FileNotFoundError(f"no TensorRT {version} API surface in {IN_REPO} or {SHARED}")


class ApiSurface:
    """Which names exist in the ``tensorrt`` module of one release."""

    def __init__(self, version: str, data: dict):
        self.version = version
        self.full_version: str = data["__source__"]["version_file"]
        self.major = int(self.full_version.split(".")[0])
        self.module_names = frozenset(data["__module__"])
        self._data = data
        self._kinds: dict[str, str] = data["__kinds__"]
        self._bases: dict[str, list[str]] = data["__bases__"]

    def has_type(self, name: str) -> bool:
        return not name.startswith("__") and name in self._data

    def is_enum(self, name: str) -> bool:
        return self._kinds.get(name) == "enum"

    def members(self, name: str) -> frozenset[str]:
        """Members of type ``name``, inherited ones included. Empty for an unknown type."""
        if not self.has_type(name):
            return frozenset()
        own = set(self._data[name])
        if _SEVERITY_PLACEHOLDER in own:  # Logger re-exports ILogger.Severity's values
            own.discard(_SEVERITY_PLACEHOLDER)
            own |= set(self._data["ILogger.Severity"])
        for base in self._bases.get(name, []):
            own |= self.members(base)
        return frozenset(own)

    def types(self) -> list[str]:
        return [name for name in self._data if self.has_type(name)]


@lru_cache(maxsize=None)
def load_surface(version: str) -> ApiSurface:
    return ApiSurface(version, json.loads(surface_path(version).read_text()))
