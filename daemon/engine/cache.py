"""The engine cache: build once per machine, reuse at every start, heal when it no longer fits.

Layout of the cache directory::

    <model>-<backend>-<key>.<ext>    the artifact (TensorRT plan, ONNX Runtime optimised model)
    <model>-<backend>-<key>.json     its sidecar: the full fingerprint, the artifact's size and sha256
    timing/<backend>-<device>.cache  TensorRT timing caches, reused across builds on the same device
    locks/<model>-<backend>-<key>.lock    held exclusively while the entry is built
    locks/<model>-<backend>-<key>.inuse   held shared by every process that has the engine loaded

Guarantees:

* **Atomic writes.** The artifact is written to a temporary name, fsynced and renamed; then the sidecar
  likewise. A process killed at any point leaves either no entry or a whole one; leftovers are ignored
  (an artifact is only used when its sidecar exists and its size and sha256 match) and pruned.
* **One build at a time.** Builders take an exclusive ``flock`` on the entry's lock file (released by
  the kernel if the process dies), then look again, so a second process waiting on the lock loads
  what the first one built instead of building it twice. ``fcntl`` is used directly rather than the
  ``filelock`` package: it is the same mechanism in ten lines of the standard library.
* **In use is never pruned.** A process that loads an entry (or builds it) holds a shared ``flock`` on
  its ``.inuse`` file for as long as it serves with it (:class:`EngineLease`); ``prune`` takes that lock
  exclusively without waiting and leaves the entry alone when it cannot. A separate file from the build
  lock, so a daemon serving an engine never blocks another process that must rebuild it.
* **Validated by loading.** A hit is only a hit if the builder loads it; a failure (corrupt file,
  TensorRT deserialisation returning None) is logged with its reason and the entry is rebuilt.
* **Reasons.** A miss logs why: no entry, or how the closest entry's fingerprint differs
  (``gpu.name: 'A100' -> 'H100'``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from .. import __version__
from ..backends.base import InferenceBackend
from ..errors import BackendError
from ..fsutil import fsync_dir, write_atomically
from .artifact import ArtifactBuilder, ArtifactInvalid, Progress
from .fingerprint import CACHE_FORMAT, diff_fingerprints, file_sha256, fingerprint_key, model_digest

__all__ = ["EngineCache", "CacheEntry", "Obtained", "Pruned", "EngineLease", "EngineLeases", "default_cache_dir", "CacheMiss"]

log = logging.getLogger("trtstream.engine.cache")

_ENTRY_FILE = re.compile(r"^.+-[a-z0-9_]+-[0-9a-f]{16}\.[A-Za-z0-9.]+$")
# The entry a file of this cache belongs to: ``<name>.<ext>``, ``<name>.json`` and a build's ``.<name>.<ext>.<random>.tmp``.
_ENTRY_OF_FILE = re.compile(r"^\.?(?P<name>.+-[a-z0-9_]+-[0-9a-f]{16})\.")


def default_cache_dir() -> Path:
    """systemd's CacheDirectory= ($CACHE_DIRECTORY), else $XDG_CACHE_HOME/trtstream, else ~/.cache/trtstream."""
    systemd = os.environ.get("CACHE_DIRECTORY")
    if systemd:
        return Path(systemd.split(":")[0])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "trtstream"


class CacheMiss(Exception):
    """No usable entry; ``reason`` says why (for the log and the heartbeat)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class CacheEntry:
    name: str
    artifact: Path
    sidecar: Path
    meta: dict[str, Any]

    @property
    def backend(self) -> str:
        return self.meta.get("fingerprint", {}).get("backend", "?")

    @property
    def size(self) -> int:
        return int(self.meta.get("artifact_size", 0))


class EngineLease:
    """A shared ``flock`` on an entry's ``.inuse`` file: this process has (or is building) that engine, so
    ``prune`` must not remove it. The kernel drops the lock when the process dies, so a crashed daemon never
    pins an engine; a lease dropped without ``release()`` still closes its descriptor (no leaked fd)."""

    def __init__(self, fd: int, name: str):
        self.name = name
        self._close = weakref.finalize(self, os.close, fd)

    def release(self) -> None:
        """Let ``prune`` remove the entry again (idempotent)."""
        self._close()


class EngineLeases:
    """The leases of the engines one daemon serves with. The daemon owns it; its engine providers add to it
    from the main thread and build threads, and the scheduler's switch callback releases from the batcher
    thread, hence the lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: list[tuple[InferenceBackend, EngineLease]] = []

    def keep(self, backend: InferenceBackend, lease: EngineLease | None) -> None:
        """Hold ``lease`` until ``backend`` no longer serves."""
        if lease is not None:
            with self._lock:
                self._held.append((backend, lease))

    def release(self, backend: InferenceBackend) -> None:
        """``backend`` was closed without ever serving (a discarded build): release its lease."""
        self._release_where(lambda held: held is backend)

    def release_except(self, serving: InferenceBackend | None) -> None:
        """After a switch (the old engine is closed) or at exit (``None``): release every other lease."""
        self._release_where(lambda held: held is not serving)

    def _release_where(self, released: Callable[[InferenceBackend], bool]) -> None:
        with self._lock:
            going = [lease for backend, lease in self._held if released(backend)]
            self._held = [(backend, lease) for backend, lease in self._held if not released(backend)]
        for lease in going:
            lease.release()


@dataclass(frozen=True)
class Obtained:
    backend: InferenceBackend
    entry: CacheEntry
    outcome: str  # "hit", "built", "built-by-other-process"
    seconds: float
    lease: EngineLease | None = None  # held while ``backend`` is in use; None outside a writable cache


@dataclass(frozen=True)
class Pruned:
    removed: list[Path] = field(default_factory=list)
    in_use: list[str] = field(default_factory=list)  # entries left alone: a running process has them loaded


class EngineCache:
    """One cache directory."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    # -- naming ----------------------------------------------------------------------------------
    def full_fingerprint(self, builder: ArtifactBuilder, model_path: Path) -> dict[str, Any]:
        return {
            "cache_format": CACHE_FORMAT,
            "backend": builder.backend,
            "model": model_digest(model_path),
            "build": builder.fingerprint(),
        }

    def entry_name(self, builder: ArtifactBuilder, model_path: Path, fingerprint: dict[str, Any]) -> str:
        return f"{model_path.stem}-{builder.backend}-{fingerprint_key(fingerprint)}"

    def paths(self, name: str, suffix: str) -> tuple[Path, Path]:
        return self.directory / f"{name}{suffix}", self.directory / f"{name}.json"

    def timing_cache_path(self, builder: ArtifactBuilder) -> Path | None:
        if not builder.uses_timing_cache:
            return None
        device_key = fingerprint_key({"backend": builder.backend, "device": builder.fingerprint().get("device")})
        return self.directory / "timing" / f"{builder.backend}-{device_key}.cache"

    # -- lookup ----------------------------------------------------------------------------------
    def _read_sidecar(self, sidecar: Path) -> dict[str, Any] | None:
        try:
            return json.loads(sidecar.read_text())
        except (OSError, ValueError):
            return None

    def _validate(self, artifact: Path, sidecar: Path, fingerprint: dict[str, Any]) -> dict[str, Any]:
        """The sidecar if the entry is whole and made for this fingerprint; else CacheMiss with why."""
        if not sidecar.exists() and not artifact.exists():
            raise CacheMiss(self._closest_difference(fingerprint, artifact.name))
        meta = self._read_sidecar(sidecar)
        if meta is None:
            raise CacheMiss(f"sidecar {sidecar.name} is missing or unreadable")
        if meta.get("fingerprint") != fingerprint:
            changes = diff_fingerprints(meta.get("fingerprint", {}), fingerprint)
            raise CacheMiss("fingerprint differs: " + "; ".join(changes[:5]))
        try:
            size = artifact.stat().st_size
        except FileNotFoundError:
            raise CacheMiss(f"artifact {artifact.name} is missing") from None
        if size != meta.get("artifact_size"):
            raise CacheMiss(f"artifact {artifact.name} is {size} bytes, expected {meta.get('artifact_size')} (truncated?)")
        if file_sha256(artifact) != meta.get("artifact_sha256"):
            raise CacheMiss(f"artifact {artifact.name} is corrupt (sha256 mismatch)")
        return meta

    def _closest_difference(self, fingerprint: dict[str, Any], wanted: str) -> str:
        """Why nothing matched: the differences to the newest entry for the same model and backend."""
        prefix = wanted.rsplit("-", 1)[0] + "-"
        candidates = [e for e in self.entries() if e.name.startswith(prefix)]
        if not candidates:
            return "no cached engine for this model and backend yet"
        newest = max(candidates, key=lambda e: e.meta.get("created", 0))
        changes = diff_fingerprints(newest.meta.get("fingerprint", {}), fingerprint)
        return f"cached engine {newest.name} was built for something else: " + "; ".join(changes[:5])

    def load_cached(self, builder: ArtifactBuilder, model_path: Path) -> Obtained:
        """Load a valid entry or raise CacheMiss (with the reason). The entry is leased before it is
        validated, so a concurrent ``prune`` either leaves it alone or has removed it whole (a miss)."""
        started = time.monotonic()
        fingerprint = self.full_fingerprint(builder, model_path)
        name = self.entry_name(builder, model_path, fingerprint)
        artifact, sidecar = self.paths(name, builder.artifact_suffix)
        lease = self.lease(name)
        try:
            meta = self._validate(artifact, sidecar, fingerprint)
            try:
                backend = builder.load(artifact)
            except ArtifactInvalid as exc:
                raise CacheMiss(f"cached engine {artifact.name} does not load: {exc}") from None
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        with contextlib.suppress(OSError):
            os.utime(sidecar)  # last use, for prune
        return Obtained(backend, CacheEntry(name, artifact, sidecar, meta), "hit", time.monotonic() - started, lease)

    # -- in use ----------------------------------------------------------------------------------
    def _open_use_lock(self, name: str) -> int:
        locks = self.directory / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        return os.open(locks / f"{name}.inuse", os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)

    def lease(self, name: str) -> EngineLease | None:
        """Mark entry ``name`` in use. Waits only while a ``prune`` is removing that very entry. None when
        the cache cannot hold lock files (read-only): the engine is still served, just not protected."""
        try:
            fd = self._open_use_lock(name)
        except OSError as exc:
            log.debug("cannot mark %s in use (%s); serving it unprotected from prune", name, exc.strerror or exc)
            return None
        fcntl.flock(fd, fcntl.LOCK_SH)
        return EngineLease(fd, name)

    @contextlib.contextmanager
    def _unless_in_use(self, name: str) -> Iterator[bool]:
        """True, holding the entry's use lock exclusively (no process can start using it meanwhile), when
        no process has ``name`` loaded; False at once when one has."""
        fd = self._open_use_lock(name)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    # -- build -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        locks = self.directory / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / f"{name}.lock", "a+") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("another process is building %s; waiting for it", name)
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def obtain(self, builder: ArtifactBuilder, model_path: Path, progress: Progress | None = None) -> Obtained:
        """A loaded backend from the cache, building (under the lock) when there is no valid entry."""
        progress = progress or (lambda fraction, message: None)
        try:
            return self.load_cached(builder, model_path)
        except CacheMiss as miss:
            log.info("engine cache miss for %s (%s): %s", model_path.name, builder.backend, miss.reason)
        started = time.monotonic()
        fingerprint = self.full_fingerprint(builder, model_path)
        name = self.entry_name(builder, model_path, fingerprint)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            lock = self._lock(name)
            lock.__enter__()
        except OSError as exc:
            return self._build_outside_cache(builder, model_path, fingerprint, name, progress, exc)
        lease = self.lease(name)  # from before the build: prune leaves the build's temporary file alone
        try:
            obtained = self._build_locked(builder, model_path, fingerprint, name, progress, lock, started)
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        if obtained.outcome != "built":  # it holds its own lease (or needs none outside the cache)
            if lease is not None:
                lease.release()
            return obtained
        return Obtained(obtained.backend, obtained.entry, obtained.outcome, obtained.seconds, lease)

    def _build_locked(self, builder, model_path: Path, fingerprint: dict[str, Any], name: str, progress: Progress, lock, started: float) -> Obtained:
        """``obtain`` once the entry's build lock is taken (released here, before the new engine loads)."""
        try:
            try:  # somebody may have built it while we waited for the lock
                obtained = self.load_cached(builder, model_path)
                log.info("engine %s was built by another process meanwhile", name)
                return Obtained(obtained.backend, obtained.entry, "built-by-other-process", time.monotonic() - started, obtained.lease)
            except CacheMiss:
                pass
            try:
                entry = self._build_entry(builder, model_path, fingerprint, name, progress)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT):
                    raise
                return self._build_outside_cache(builder, model_path, fingerprint, name, progress, exc)
        finally:
            lock.__exit__(None, None, None)
        try:
            backend = builder.load(entry.artifact)
        except ArtifactInvalid as exc:
            raise BackendError(f"the engine just built does not load: {exc}") from None
        seconds = time.monotonic() - started
        log.info("built engine %s in %.1fs (%d bytes)", name, seconds, entry.size)
        return Obtained(backend, entry, "built", seconds)

    def _build_entry(self, builder: ArtifactBuilder, model_path: Path, fingerprint: dict[str, Any], name: str, progress: Progress) -> CacheEntry:
        artifact, sidecar = self.paths(name, builder.artifact_suffix)
        timing = self.timing_cache_path(builder)
        if timing is not None:
            timing.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(prefix=f".{artifact.name}.", suffix=".tmp", dir=self.directory)
        os.close(fd)
        temp = Path(temp_name)
        try:
            build_started = time.monotonic()
            builder.build(model_path, temp, timing, progress)
            with open(temp, "rb+") as handle:
                os.fsync(handle.fileno())
            meta = {
                "fingerprint": fingerprint,
                "artifact": artifact.name,
                "artifact_size": temp.stat().st_size,
                "artifact_sha256": file_sha256(temp),
                "model_path": str(model_path),
                "created": time.time(),
                "build_seconds": round(time.monotonic() - build_started, 3),
                "trtstream_version": __version__,
            }
            os.replace(temp, artifact)
            fsync_dir(self.directory)
            write_atomically(sidecar, json.dumps(meta, indent=2, sort_keys=True).encode())
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
        return CacheEntry(name, artifact, sidecar, meta)

    def _build_outside_cache(self, builder, model_path, fingerprint, name, progress, error: OSError) -> Obtained:
        """The cache cannot be written (read-only, full): build into a temporary directory and serve."""
        log.warning("cannot write the engine cache %s (%s); building into a temporary directory", self.directory, error.strerror or error)
        scratch = EngineCache(Path(tempfile.mkdtemp(prefix="trtstream-engine-")))
        started = time.monotonic()
        entry = scratch._build_entry(builder, model_path, fingerprint, name, progress)
        backend = builder.load(entry.artifact)
        return Obtained(backend, entry, "built-uncached", time.monotonic() - started)

    # -- maintenance -----------------------------------------------------------------------------
    def entries(self) -> list[CacheEntry]:
        found = []
        if not self.directory.is_dir():
            return found
        for sidecar in sorted(self.directory.glob("*.json")):
            meta = self._read_sidecar(sidecar)
            if not meta or "artifact" not in meta:
                continue
            found.append(CacheEntry(sidecar.stem, self.directory / meta["artifact"], sidecar, meta))
        return found

    def prune(self, keep: int = 1, older_than_s: float | None = None, dry_run: bool = False) -> Pruned:
        """Remove leftovers of interrupted writes, artifacts without a sidecar, and all but the ``keep``
        most recently used entries per (model, backend) — or entries unused for ``older_than_s``. An entry
        a running process has loaded (or is building) is left alone, whatever its age: it is in ``in_use``."""
        if keep < 1:
            raise ValueError(f"keep must be at least 1 (got {keep}): the newest engine is the one the next start loads")
        doomed = self._stale_entry_files(keep, older_than_s) + self._leftover_files()
        by_entry: dict[str | None, list[Path]] = {}
        for path in doomed:
            match = _ENTRY_OF_FILE.match(path.name)
            by_entry.setdefault(match["name"] if match else None, []).append(path)
        pruned = Pruned()
        for name, paths in by_entry.items():
            if name is None:
                pruned.removed.extend(self._remove(paths, dry_run))
                continue
            with self._unless_in_use(name) as unused:  # held while removing: no process can start using it
                if unused:
                    pruned.removed.extend(self._remove(paths, dry_run))
                else:
                    pruned.in_use.append(name)
        return pruned

    def _stale_entry_files(self, keep: int, older_than_s: float | None) -> list[Path]:
        now = time.time()
        groups: dict[str, list[CacheEntry]] = {}
        for entry in self.entries():
            groups.setdefault(entry.name.rsplit("-", 1)[0], []).append(entry)
        doomed: list[Path] = []
        for group in groups.values():
            group.sort(key=lambda e: e.sidecar.stat().st_mtime, reverse=True)
            for index, entry in enumerate(group):
                unused = now - entry.sidecar.stat().st_mtime
                if index >= keep or (older_than_s is not None and unused > older_than_s):
                    doomed += [entry.artifact, entry.sidecar]
        return doomed

    def _leftover_files(self) -> list[Path]:
        """Temporary files of interrupted writes and artifacts without a sidecar; never anything else."""
        if not self.directory.is_dir():
            return []
        known = {e.artifact.name for e in self.entries()} | {e.sidecar.name for e in self.entries()}
        found = []
        for path in self.directory.iterdir():
            leftover = path.name.startswith(".") and path.name.endswith(".tmp")
            orphan = _ENTRY_FILE.match(path.name) and path.name not in known
            if path.is_file() and (leftover or orphan):
                found.append(path)
        return found

    @staticmethod
    def _remove(paths: list[Path], dry_run: bool) -> list[Path]:
        removed = [path for path in paths if path.exists()]
        if not dry_run:
            for path in removed:
                path.unlink()
        return removed
