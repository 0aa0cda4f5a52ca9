"""The operating system's name of the calling thread, set from its Python name: ``top -H``, ``ps -L``,
/proc/PID/task/*/comm (and ``scripts/soak``'s CPU by thread role) then tell the reader threads
(``capture:cam007``) from the batcher, the completer and the publisher instead of showing ``python``
for all of them (CPython before 3.14 leaves native names alone). Linux only; elsewhere nothing."""

from __future__ import annotations

import ctypes
import sys
import threading

_PR_SET_NAME = 15
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def name_this_thread() -> None:
    """Give the calling thread its ``threading`` name as its OS name (cut to the 15 bytes Linux keeps)."""
    if _libc is None:
        return
    name = threading.current_thread().name.encode("utf-8", "replace")[:15]
    _libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)
