"""journald handler (daemon/journal.py): structured, masked fields; used only when stderr is the journal."""

from __future__ import annotations

import logging
import os

import pytest

from daemon.journal import JournalFieldsHandler, journal_handler, stderr_is_journal

from .conftest import missing



class Recorder:
    def __init__(self) -> None:
        self.entries: list[tuple[str, dict]] = []

    def __call__(self, message: str, **fields) -> None:
        self.entries.append((message, fields))


@pytest.fixture
def journal_log():
    recorder = Recorder()
    logger = logging.getLogger("trtstream.test.journal")
    handler = JournalFieldsHandler({"TRTSTREAM_INSTANCE": "gpu0"}, sender=recorder)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, recorder
    logger.removeHandler(handler)


def test_fields_and_masking(journal_log):
    logger, recorder = journal_log
    uri = "rtsp://admin:hunter2@10.0.0.7/stream"
    logger.warning("cannot open %s", uri, extra={"source_id": "cam1", "camera_url": uri, "bad key": "x", "_PID": "1"})
    message, fields = recorder.entries[-1]
    assert message == "cannot open rtsp://admin:***@10.0.0.7/stream"
    assert fields["SOURCE_ID"] == "cam1" and fields["TRTSTREAM_INSTANCE"] == "gpu0"
    assert fields["CAMERA_URL"] == "rtsp://admin:***@10.0.0.7/stream"
    assert fields["PRIORITY"] == "4" and fields["LOGGER"] == "trtstream.test.journal"
    assert fields["SYSLOG_IDENTIFIER"] == "trtstream" and fields["THREAD_NAME"]
    assert "CODE_ARGS" not in fields, "raw arguments would carry the unmasked password"
    assert "BAD KEY" not in fields and "_PID" not in fields, "invalid or trusted field names are dropped"
    assert "hunter2" not in repr(recorder.entries)


def test_priorities_and_tracebacks(journal_log):
    logger, recorder = journal_log
    logger.debug("d")
    logger.info("i")
    logger.error("e")
    try:
        raise RuntimeError("connect rtsp://u:secret@cam/1 failed")
    except RuntimeError:
        logger.exception("reader crashed")
    assert [f["PRIORITY"] for _, f in recorder.entries] == ["7", "6", "3", "3"]
    message = recorder.entries[-1][0]
    assert message.startswith("reader crashed\nTraceback") and "secret" not in message and "u:***@cam" in message


def test_extra_cannot_spoof_priority(journal_log):
    logger, recorder = journal_log
    logger.info("hello", extra={"priority": "0"})
    assert recorder.entries[-1][1]["PRIORITY"] == "6"


def test_stderr_is_journal(tmp_path):
    with open(tmp_path / "stream", "w") as handle:
        st = os.fstat(handle.fileno())
        assert stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, handle.fileno())
        assert not stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, handle.fileno())
        assert not stderr_is_journal({}, handle.fileno())


def test_journal_handler_only_when_connected_to_the_journal(tmp_path):
    try:
        import systemd.journal  # noqa: F401
    except ImportError as exc:
        message = f"needs systemd-python ({exc}): apt-get install -y libsystemd-dev pkg-config; pip install systemd-python"
        missing(message)
    with open(tmp_path / "stream", "w") as handle:
        st = os.fstat(handle.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}", "TRTSTREAM_INSTANCE": "gpu1"}
        handler = journal_handler(env, fd=handle.fileno())
        assert isinstance(handler, JournalFieldsHandler)
        assert handler.fields["TRTSTREAM_INSTANCE"] == "gpu1"
        assert journal_handler({}, fd=handle.fileno()) is None
