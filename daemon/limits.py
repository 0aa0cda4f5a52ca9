"""Process limits the daemon sets for itself at start.

Open files: every subscriber, every metrics scrape, every control request and every camera holds a
descriptor, and so does every TCP connection anyone opens to the publisher port, before (and whether or
not) it completes a ZMTP or CURVE handshake. At the usual soft limit of 1024 a thousand idle
connections filled the table, and libzmq aborts the whole process (``Too many open files
(src/ipc_listener.cpp:297)``) when its next accept fails. The hard limit is what the administrator
granted (``LimitNOFILE=`` in the units, ``ulimit -Hn`` elsewhere), so the soft one is raised to it.
Nothing in the daemon uses ``select()``, so descriptors above 1024 are safe.
"""

from __future__ import annotations

import resource

__all__ = ["raise_nofile_limit"]

_NR_OPEN = "/proc/sys/fs/nr_open"  # the kernel's ceiling for RLIMIT_NOFILE when the hard one is infinite


def raise_nofile_limit() -> tuple[int, int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns (soft before, soft now, hard). Never
    raises: a limit that cannot be changed (a container's seccomp policy, say) is left as it was."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:  # setrlimit refuses a soft limit above fs.nr_open
        try:
            with open(_NR_OPEN) as f:
                target = int(f.read())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):
            pass
    return soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard
