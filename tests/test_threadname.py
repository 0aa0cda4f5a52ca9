"""Native thread names (daemon/threadname.py): what ``top -H`` and /proc show for the daemon's threads."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from daemon.threadname import name_this_thread


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and prctl are Linux's")
def test_a_thread_gets_its_python_name_as_its_os_name_cut_to_15_bytes():
    seen = {}

    def run():
        name_this_thread()
        seen[threading.current_thread().name] = Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()

    for name in ("capture:cam007", "capture:a-very-long-camera-id"):
        thread = threading.Thread(target=run, name=name)
        thread.start()
        thread.join(10)
    assert seen == {"capture:cam007": "capture:cam007", "capture:a-very-long-camera-id": "capture:a-very-"}
