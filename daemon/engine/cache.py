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
  (``gpu.name: 'A100' -> 'H100'``). An entry this process cannot read is a miss too (with a warning), never
  a crash.
* **Readable by who can reach the cache.** Artifact and sidecar get the same access, inherited from the
  cache directory (:func:`daemon.fsutil.share_like_directory`): an engine root built is readable by the
  service user.
* **Only its own files.** A sidecar whose ``artifact`` is not a plain file name of its own entry
  (``../x``, ``/etc/x``, another entry's artifact) is ignored with a warning; nothing is ever removed
  outside the cache directory. Lock files are opened without following symlinks.
* **Unwritable cache.** Read-only, full (ENOSPC, also when a library only says its write failed), not
  permitted: the daemon builds into a scratch directory that is removed once the engine is loaded
  (``built-uncached``); ``engine build`` (``obtain(uncached=False)``) fails with :class:`CacheUnwritable`.
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
from ..errors import BackendError, UserError
from ..fsutil import NO_SPACE, describe_write_error, fsync_dir, share_like_directory, user_name, write_atomically
from .artifact import ArtifactBuilder, ArtifactInvalid, Progress
from .fingerprint import CACHE_FORMAT, diff_fingerprints, file_sha256, fingerprint_key, model_digest

__all__ = ["EngineCache", "CacheEntry", "Obtained", "Pruned", "EngineLease", "EngineLeases", "default_cache_dir", "CacheMiss", "CacheUnwritable"]

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


class CacheUnwritable(UserError):
    """The engine cache cannot be written (read-only, full, not permitted, a symlinked lock file) and the
    caller wants the engine in the cache, not just built (``trtstream engine build``): one line, exit 1."""


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
    unchecked: dict[str, str] = field(default_factory=dict)  # entries left alone: whether in use cannot be told (why)


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
        """One timing cache per backend and device (the builder fingerprint's ``device``). A builder that
        uses one but names no device gets none: a timing cache shared by every GPU is worse than none."""
        if not builder.uses_timing_cache:
            return None
        device = builder.fingerprint().get("device")
        if not device:
            log.warning("the %s builder's fingerprint names no device; building without a timing cache", builder.backend)
            return None
        device_key = fingerprint_key({"backend": builder.backend, "device": device})
        return self.directory / "timing" / f"{builder.backend}-{device_key}.cache"

    # -- lookup ----------------------------------------------------------------------------------
    def _read_sidecar(self, sidecar: Path) -> dict[str, Any] | None:
        try:
            return json.loads(sidecar.read_text())
        except (OSError, ValueError):
            return None

    def _validate(self, artifact: Path, sidecar: Path, fingerprint: dict[str, Any]) -> dict[str, Any]:
        """The sidecar if the entry is whole and made for this fingerprint; else CacheMiss with why."""
        try:
            if not sidecar.exists() and not artifact.exists():
                raise CacheMiss(self._closest_difference(fingerprint, artifact.name))
            return self._validate_readable(artifact, sidecar, fingerprint)
        except OSError as exc:  # not permitted (root built it 0600), a directory in its place, an I/O error
            if isinstance(exc, FileNotFoundError):
                raise CacheMiss(f"{Path(exc.filename or artifact).name} is missing") from None
            name = Path(exc.filename or artifact).name
            reason = f"cannot read {name}: {exc.strerror or exc}"
            log.warning(
                "engine cache %s: %s (as user %s); treated as a miss. Make the cache readable by this user "
                "(see 'The engine cache' in docs/operations.md)", self.directory, reason, user_name(),
            )
            raise CacheMiss(reason) from None

    def _validate_readable(self, artifact: Path, sidecar: Path, fingerprint: dict[str, Any]) -> dict[str, Any]:
        try:
            meta = json.loads(sidecar.read_bytes())
        except FileNotFoundError:
            raise CacheMiss(f"sidecar {sidecar.name} is missing") from None
        except ValueError:
            raise CacheMiss(f"sidecar {sidecar.name} is not valid JSON") from None
        if not isinstance(meta, dict):
            raise CacheMiss(f"sidecar {sidecar.name} is not a JSON object")
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

    # -- lock files ------------------------------------------------------------------------------
    def _open_lock_file(self, filename: str) -> int:
        """``locks/<filename>``, created if missing, opened read-only (``flock`` needs no more, so an existing
        lock file of another user serves too) and never through a symlink: neither ``locks`` nor the file
        may be one (OSError ELOOP naming it). A file it creates gets the access the directory grants."""
        locks = self.directory / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        try:
            dir_fd = os.open(locks, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise OSError(errno.ELOOP, "is a symbolic link (not followed)", str(locks)) from None
            raise
        try:
            fd = os.open(filename, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OSError(errno.ELOOP, "is a symbolic link (not followed)", str(locks / filename)) from None
            raise
        finally:
            os.close(dir_fd)
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_uid == os.geteuid():
                share_like_directory(fd, locks)
        return fd

    # -- in use ----------------------------------------------------------------------------------
    def _open_use_lock(self, name: str) -> int:
        return self._open_lock_file(f"{name}.inuse")

    def lease(self, name: str) -> EngineLease | None:
        """Mark entry ``name`` in use. Waits only while a ``prune`` is removing that very entry. None when
        the cache cannot hold lock files (read-only): the engine is still served, just not protected."""
        try:
            fd = self._open_use_lock(name)
        except OSError as exc:
            level = logging.WARNING if exc.errno == errno.ELOOP else logging.DEBUG
            log.log(level, "cannot mark %s in use (%s); serving it unprotected from prune", name, describe_write_error(exc, self.directory))
            return None
        fcntl.flock(fd, fcntl.LOCK_SH)
        return EngineLease(fd, name)

    @contextlib.contextmanager
    def _unless_in_use(self, name: str) -> Iterator[bool | str]:
        """True, holding the entry's use lock exclusively (no process can start using it meanwhile), when
        no process has ``name`` loaded; False at once when one has; why, when that cannot be told."""
        try:
            fd = self._open_use_lock(name)
        except OSError as exc:
            yield describe_write_error(exc, self.directory)
            return
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
        with open(self._open_lock_file(f"{name}.lock"), "rb", closefd=True) as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("another process is building %s; waiting for it", name)
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def obtain(self, builder: ArtifactBuilder, model_path: Path, progress: Progress | None = None, uncached: bool = True) -> Obtained:
        """A loaded backend from the cache, building (under the lock) when there is no valid entry. When the
        cache cannot be written: ``uncached`` (the daemon) builds into a scratch directory and serves;
        otherwise (``engine build``, whose job is the cache entry) raise CacheUnwritable."""
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
            return self._build_outside_cache(builder, model_path, fingerprint, name, progress, exc, uncached)
        lease = self.lease(name)  # from before the build: prune leaves the build's temporary file alone
        try:
            obtained = self._build_locked(builder, model_path, fingerprint, name, progress, lock, started, uncached)
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        if obtained.outcome != "built":  # it holds its own lease (or needs none outside the cache)
            if lease is not None:
                lease.release()
            return obtained
        return Obtained(obtained.backend, obtained.entry, obtained.outcome, obtained.seconds, lease)

    def _build_locked(self, builder, model_path: Path, fingerprint: dict[str, Any], name: str, progress: Progress, lock, started: float, uncached: bool) -> Obtained:
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
                if exc.errno not in (*NO_SPACE, errno.EROFS, errno.EACCES, errno.EPERM):
                    raise
                return self._build_outside_cache(builder, model_path, fingerprint, name, progress, exc, uncached)
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
                share_like_directory(handle.fileno(), self.directory)  # the sidecar's access, not mkstemp's 0600
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
            try:
                write_atomically(sidecar, json.dumps(meta, indent=2, sort_keys=True).encode(), mode=None)
            except BaseException:  # no sidecar, no entry: nothing half-written stays (a full disk, say)
                with contextlib.suppress(OSError):
                    artifact.unlink()
                raise
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
        return CacheEntry(name, artifact, sidecar, meta)

    def _build_outside_cache(self, builder, model_path, fingerprint, name, progress, error: OSError, uncached: bool) -> Obtained:
        """The cache cannot be written (read-only, full, not permitted): with ``uncached``, build into a
        scratch directory, load, and remove the directory (a loaded engine lives in memory); else refuse."""
        why = describe_write_error(error, self.directory)
        if not uncached:
            raise CacheUnwritable(f"cannot write the engine cache: {why}")
        log.warning("cannot write the engine cache: %s; building into a temporary directory, removed once the engine is loaded", why)
        started = time.monotonic()
        try:
            with tempfile.TemporaryDirectory(prefix="trtstream-engine-") as scratch:
                entry = EngineCache(Path(scratch))._build_entry(builder, model_path, fingerprint, name, progress)
                try:
                    backend = builder.load(entry.artifact)
                except ArtifactInvalid as exc:
                    raise BackendError(f"the engine just built does not load: {exc}") from None
        except OSError as exc:
            raise BackendError(f"cannot write the engine cache ({why}), nor a temporary directory: {describe_write_error(exc, Path(tempfile.gettempdir()))}") from None
        return Obtained(backend, entry, "built-uncached", time.monotonic() - started)

    # -- maintenance -----------------------------------------------------------------------------
    def entries(self) -> list[CacheEntry]:
        return self._scan()[0]

    def _scan(self) -> tuple[list[CacheEntry], set[str]]:
        """The entries, and the sidecars ignored because the artifact they name is not their own (warned)."""
        found: list[CacheEntry] = []
        ignored: set[str] = set()
        if not self.directory.is_dir():
            return found, ignored
        for sidecar in sorted(self.directory.glob("*.json")):
            meta = self._read_sidecar(sidecar)
            if not isinstance(meta, dict) or "artifact" not in meta:
                continue
            artifact = meta["artifact"]
            if not _own_artifact_name(sidecar, artifact):
                log.warning(
                    "engine cache %s: sidecar %s names artifact %r, which is not a file of its own entry in the "
                    "cache; ignored (nothing is removed for it)", self.directory, sidecar.name, artifact,
                )
                ignored.add(sidecar.name)
                continue
            found.append(CacheEntry(sidecar.stem, self.directory / artifact, sidecar, meta))
        return found, ignored

    def prune(self, keep: int = 1, older_than_s: float | None = None, dry_run: bool = False) -> Pruned:
        """Remove leftovers of interrupted writes, artifacts without a sidecar, and all but the ``keep``
        most recently used entries per (model, backend) — or entries unused for ``older_than_s``. An entry
        a running process has loaded (or is building) is left alone, whatever its age: it is in ``in_use``."""
        if keep < 1:
            raise ValueError(f"keep must be at least 1 (got {keep}): the newest engine is the one the next start loads")
        entries, ignored = self._scan()
        doomed = self._stale_entry_files(entries, keep, older_than_s) + self._leftover_files(entries, ignored)
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
                if isinstance(unused, str):
                    pruned.unchecked[name] = unused
                elif unused:
                    pruned.removed.extend(self._remove(paths, dry_run))
                else:
                    pruned.in_use.append(name)
        return pruned

    def _stale_entry_files(self, entries: list[CacheEntry], keep: int, older_than_s: float | None) -> list[Path]:
        now = time.time()
        groups: dict[str, list[CacheEntry]] = {}
        for entry in entries:
            groups.setdefault(entry.name.rsplit("-", 1)[0], []).append(entry)
        doomed: list[Path] = []
        for group in groups.values():
            group.sort(key=lambda e: e.sidecar.stat().st_mtime, reverse=True)
            for index, entry in enumerate(group):
                unused = now - entry.sidecar.stat().st_mtime
                if index >= keep or (older_than_s is not None and unused > older_than_s):
                    doomed += [entry.artifact, entry.sidecar]
        return doomed

    def _leftover_files(self, entries: list[CacheEntry], ignored: set[str]) -> list[Path]:
        """Temporary files of interrupted writes and artifacts without a sidecar; never anything else (an
        ignored sidecar stays, for the operator to look at)."""
        if not self.directory.is_dir():
            return []
        known = {e.artifact.name for e in entries} | {e.sidecar.name for e in entries} | ignored
        found = []
        for path in self.directory.iterdir():
            leftover = path.name.startswith(".") and path.name.endswith(".tmp")
            orphan = _ENTRY_FILE.match(path.name) and path.name not in known
            if path.is_file() and (leftover or orphan):
                found.append(path)
        return found

    def _remove(self, paths: list[Path], dry_run: bool) -> list[Path]:
        """Unlink ``paths``, each of which must be a plain file name directly in the cache directory (the
        last guard: prune never removes anything elsewhere, whatever a sidecar said)."""
        removed = []
        for path in paths:
            if path.parent != self.directory or path.name in ("", ".", ".."):
                log.warning("engine cache %s: not removing %s, which is not in the cache directory", self.directory, path)
                continue
            if os.path.lexists(path):
                removed.append(path)
        if not dry_run:
            for path in removed:
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
                except OSError as exc:  # a cache this user may not write: one line, not a traceback
                    raise CacheUnwritable(f"cannot prune the engine cache: {describe_write_error(exc, self.directory)}") from None
        return removed


def _own_artifact_name(sidecar: Path, artifact: Any) -> bool:
    """``artifact`` is a plain file name of the sidecar's own entry: ``<entry>.<ext>`` beside it."""
    return (
        isinstance(artifact, str)
        and "/" not in artifact
        and "\x00" not in artifact
        and artifact.startswith(f"{sidecar.stem}.")
        and artifact != sidecar.name
        and _ENTRY_FILE.match(artifact) is not None
    )

