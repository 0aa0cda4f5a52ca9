"""Fingerprints: everything an engine artifact depends on, hashed into a cache key.

A TensorRT plan is only valid for the exact TensorRT build, GPU architecture and build options that
made it, and nothing in TensorRT can check a plan before trying to load it. So the cache keys every
artifact on the full set of inputs: the builder's own fingerprint (backend and exact version, GPU name
and compute capability, CUDA runtime and driver, every build option, plugin hashes) plus the model's
SHA-256 including its external-data files. Any change is a different key, hence a rebuild.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

__all__ = ["file_sha256", "model_digest", "external_data_files", "fingerprint_key", "diff_fingerprints", "CACHE_FORMAT"]

CACHE_FORMAT = 1  # bump when the cache layout or the meaning of a fingerprint field changes

# In an ONNX TensorProto, external data is a StringStringEntryProto {key: "location", value: FILE}:
# bytes 0x0a 0x08 "location" 0x12 <varint length> FILE.
_LOCATION = re.compile(rb"\x0a\x08location\x12")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def external_data_files(model_path: Path) -> list[Path]:
    """Files an ONNX model keeps its weights in (``location`` entries), found without importing onnx."""
    data = model_path.read_bytes()
    found: dict[str, None] = {}
    for match in _LOCATION.finditer(data):
        position, length, shift = match.end(), 0, 0
        while position < len(data):  # protobuf varint
            byte = data[position]
            length |= (byte & 0x7F) << shift
            position += 1
            shift += 7
            if not byte & 0x80:
                break
        name = data[position : position + length].decode("utf-8", errors="replace")
        if name and "\x00" not in name:
            found[name] = None
    return [model_path.parent / name for name in found]


def model_digest(model_path: Path) -> dict[str, Any]:
    """SHA-256 of the model and of every external-data file it references (missing ones are named)."""
    digest: dict[str, Any] = {"sha256": file_sha256(model_path)}
    external = {}
    for path in external_data_files(model_path):
        external[path.name] = file_sha256(path) if path.is_file() else "missing"
    if external:
        digest["external_data"] = external
    return digest


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def fingerprint_key(fingerprint: dict[str, Any]) -> str:
    """16 hex characters of the SHA-256 of the canonical JSON form."""
    return hashlib.sha256(canonical(fingerprint).encode()).hexdigest()[:16]


def diff_fingerprints(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences, e.g. ``gpu.name: 'A100' -> 'H100'`` (for the rebuild reason in the log)."""
    changes = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}{key}"
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            changes += diff_fingerprints(a, b, path + ".")
        elif a != b:
            shown_a, shown_b = (v[:12] + "…" if isinstance(v, str) and len(v) == 64 else v for v in (a, b))
            changes.append(f"{path}: {shown_a!r} -> {shown_b!r}")
    return changes
