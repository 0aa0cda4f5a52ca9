"""Crash-safe file writes (readers see the old file or the whole new one, never a part), file access
inherited from the directory, and telling a full disk from other failures."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path

__all__ = ["write_atomically", "fsync_dir", "share_like_directory", "no_space_left", "NO_SPACE", "describe_write_error", "user_name"]

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort: some filesystems refuse directory fsync)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def share_like_directory(fd: int, directory: Path) -> int:
    """Give the file open at ``fd`` the access its directory grants: mode 0644 reduced to who may enter the
    directory (group read only if the group may search it, others read only if others may: a 0755
    directory gives 0644, a 0750 one 0640), the directory's group, and, when root writes into a
    directory owned by another user (``sudo trtstream engine build`` into the service's cache), that
    user as owner. So whoever can reach the directory can read what is in it, whoever wrote it; a
    change of owner or group that is not permitted is skipped (the mode still applies). Returns the mode."""
    info = os.stat(directory)
    mode = 0o600
    if info.st_mode & stat.S_IXGRP:
        mode |= 0o040
    if info.st_mode & stat.S_IXOTH:
        mode |= 0o004
    uid = info.st_uid if os.geteuid() == 0 else -1
    with contextlib.suppress(OSError):
        os.fchown(fd, uid, info.st_gid)
    os.fchmod(fd, mode)  # after fchown, which may clear bits
    return mode


def write_atomically(path: Path, data: bytes, mode: int | None = 0o644) -> None:
    """Temporary file in the same directory, fsync, chmod (mkstemp makes 0600), rename, fsync the directory.
    ``mode=None``: the access the directory grants (:func:`share_like_directory`)."""
    path = Path(path)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
            if mode is None:
                share_like_directory(handle.fileno(), path.parent)
        if mode is not None:
            os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    fsync_dir(path.parent)


def no_space_left(directory: Path, needed: int) -> bool:
    """Whether ``directory``'s filesystem cannot take ``needed`` more bytes, asked of the filesystem itself:
    a probe file there is given ``needed`` bytes with ``posix_fallocate`` (ENOSPC or EDQUOT: no room, quotas
    included), then removed. For libraries that lose the errno of a failed write (ONNX Runtime reports a
    full disk as a protobuf serialization failure). Where the probe cannot be made for another reason
    (no fallocate, no permission), free space by ``statvfs`` decides."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".space-probe.", suffix=".tmp", dir=directory)
    except OSError as exc:
        if exc.errno in NO_SPACE:
            return True
        return _statvfs_short(directory, needed)
    try:
        os.posix_fallocate(fd, 0, max(needed, 1))
        return False
    except OSError as exc:
        if exc.errno in NO_SPACE:
            return True
        return _statvfs_short(directory, needed)
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(probe)


def _statvfs_short(directory: Path, needed: int) -> bool:
    try:
        info = os.statvfs(directory)
    except OSError:
        return False
    return info.f_bavail * info.f_frsize < needed


def describe_write_error(error: OSError, path: Path) -> str:
    """Why ``path`` cannot be written, in words that name it: ``no space left on /var/cache/trtstream``."""
    code = error.errno
    if code == errno.ENOSPC:
        return f"no space left on {path}"
    if code == errno.EDQUOT:
        return f"disk quota exceeded on {path}"
    if code == errno.EROFS:
        return f"{path} is on a read-only filesystem"
    if code in (errno.EACCES, errno.EPERM):
        return f"{path}: permission denied for user {user_name()}"
    if code == errno.ELOOP and error.filename:
        return f"{error.filename} is a symbolic link (not followed)"
    where = error.filename or path
    return f"{where}: {error.strerror or error}"


def user_name() -> str:
    """This process's effective user, by name where it has one."""
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return str(os.geteuid())
