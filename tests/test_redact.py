import io
import logging

import pytest

from daemon.redact import RedactingFormatter, mask_text, mask_url


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("rtsp://admin:hunter2@10.0.0.7:554/stream1", "rtsp://admin:***@10.0.0.7:554/stream1"),
        ("http://user:p%40ss@cam.local/mjpeg", "http://user:***@cam.local/mjpeg"),
        ("rtsp://:only-password@cam/", "rtsp://:***@cam/"),
        ("https://cam.local/live?token=abc123&res=hd", "https://cam.local/live?token=***&res=hd"),
        ("rtsp://cam.local/stream?user=x&password=secret", "rtsp://cam.local/stream?user=x&password=***"),
        ("rtsp://cam.local/stream", "rtsp://cam.local/stream"),
        ("/videos/a:b@c.mp4", "/videos/a:b@c.mp4"),
    ],
)
def test_mask_url(url, masked):
    assert mask_url(url) == masked


def test_masking_inside_text_and_tracebacks():
    assert mask_text("cannot open rtsp://u:pw@h/s and http://a:b@c/") == "cannot open rtsp://u:***@h/s and http://a:***@c/"
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter("%(message)s"))
    logger = logging.getLogger("test.redact")
    logger.addHandler(handler)
    try:
        try:
            raise RuntimeError("failed rtsp://admin:hunter2@cam/s")
        except RuntimeError:
            logger.exception("opening %s", "rtsp://admin:hunter2@cam/s")
    finally:
        logger.removeHandler(handler)
    assert "hunter2" not in stream.getvalue()
    assert stream.getvalue().count("admin:***@") >= 2  # message and exception line (and source line)
