"""What a backend must provide for its engine to go through the cache.

An *artifact* is what a backend builds from an ONNX model for this machine: a TensorRT plan, or ONNX
Runtime's optimised model. The cache (:mod:`daemon.engine.cache`) decides when to build, writes
atomically, locks across processes and validates by loading; the builder only knows how to build and
load its own artifact and what that artifact depends on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

from ..backends.base import InferenceBackend
from ..errors import BackendError

__all__ = ["ArtifactBuilder", "ArtifactInvalid", "Progress"]

Progress = Callable[[float, str], None]  # fraction done in [0, 1], what is happening


class ArtifactInvalid(BackendError):
    """The artifact exists but cannot be used here (corrupt, other TensorRT version or GPU): rebuild it."""


class ArtifactBuilder(Protocol):
    backend: str  # "tensorrt", "onnxruntime", ...
    artifact_suffix: str  # ".engine", ".onnx", ...
    uses_timing_cache: bool

    def fingerprint(self) -> dict[str, Any]:
        """Everything the artifact depends on except the model bytes (the cache adds the model's sha256):
        backend and its exact version, the device (GPU name, compute capability, CUDA runtime and driver
        versions), and every build option. JSON-serialisable; any change means a rebuild. Its ``device``
        key names the device the artifact is for (the cache keys timing caches on it: a builder with
        ``uses_timing_cache`` and no ``device`` gets no timing cache)."""

    def build(self, model_path: Path, output_path: Path, timing_cache_path: Path | None, progress: Progress) -> None:
        """Write the artifact to ``output_path`` (a temporary name the cache renames). Raise BackendError
        naming every problem (all ONNX parser errors, say) if it cannot be built; OSError with its errno
        (ENOSPC for a full disk) when writing fails, so the cache can take its unwritable-cache path."""

    def load(self, artifact_path: Path) -> InferenceBackend:
        """Load the artifact into a ready backend; raise ArtifactInvalid if it cannot be used."""

    def child_recipe(self) -> tuple[Callable[..., "ArtifactBuilder"], tuple] | None:
        """How a child process makes this same builder (a module-level factory and picklable arguments),
        so the daemon can build there and end the build at will (:mod:`daemon.engine.child`); None when
        it cannot be made elsewhere (a builder on injected test doubles), and builds in-process."""
