"""Credential masking (daemon/redact.py): one rule for every ``scheme://userinfo@`` and every credential-like
query key, applied wherever a URI or a log line is shown."""

import io
import json
import logging
from pathlib import Path

import pytest

from daemon.config import parse_config
from daemon.logs import JsonFormatter
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
        # userinfo runs to the LAST '@' before the host, as FFmpeg reads it: '@', '/', ':' in a password
        ("rtsp://admin:pa@ss@127.0.0.1:554/live", "rtsp://admin:***@127.0.0.1:554/live"),
        ("rtsp://admin:p@a@s@s@cam/live", "rtsp://admin:***@cam/live"),
        ("rtsp://admin:pa/ss@cam.local/live", "rtsp://admin:***@cam.local/live"),
        ("rtsp://admin:pa:ss@cam.local:554/live", "rtsp://admin:***@cam.local:554/live"),
        ("rtsp://admin:p/a@s:s@cam:554/live", "rtsp://admin:***@cam:554/live"),
        # a token as the user name, with no password (or an empty one)
        ("https://ghp_T0kenValue@cam.local/mjpeg", "https://***@cam.local/mjpeg"),
        ("https://ghp_T0kenValue:@cam.local/mjpeg", "https://***@cam.local/mjpeg"),
        ("udp://@:1234", "udp://@:1234"),  # FFmpeg's listener form: nothing to mask
        # any scheme, mistyped or unknown ones included
        ("rstp://admin:S3cr3t@127.0.0.1:1/live", "rstp://admin:***@127.0.0.1:1/live"),
        ("ftp://admin:S3cr3t@nas/clip.mp4", "ftp://admin:***@nas/clip.mp4"),
        ("my+proto.v2://admin:S3cr3t@cam/x", "my+proto.v2://admin:***@cam/x"),
        ("RTSP://Admin:S3cr3t@cam/x", "RTSP://Admin:***@cam/x"),
        # a URL taken for a file path (kind = 'file', or a path that ends in one) keeps its '//'
        ("/etc/trtstream/rstp://admin:S3cr3t@127.0.0.1:1/live", "/etc/trtstream/rstp://admin:***@127.0.0.1:1/live"),
        ("/clips/2rtsp://admin:S3cr3t@cam/x", "/clips/2rtsp://admin:***@cam/x"),
        # credential-like query keys, case-insensitive, ';' '&' '?' separated
        ("https://cam/live?apikey=K3y&res=hd", "https://cam/live?apikey=***&res=hd"),
        ("https://cam/live?api_key=K3y", "https://cam/live?api_key=***"),
        ("https://cam/live?api-key=K3y", "https://cam/live?api-key=***"),
        ("https://cam/live?APIKEY=K3y", "https://cam/live?APIKEY=***"),
        ("https://cam/live?key=K3y&sig=S1g", "https://cam/live?key=***&sig=***"),
        ("https://cam/live?x=1&access_token=T0k#frag", "https://cam/live?x=1&access_token=***#frag"),
        ("https://cam/live?auth=A&signature=S&passwd=P&pwd=W&secret=Z", "https://cam/live?auth=***&signature=***&passwd=***&pwd=***&secret=***"),
        ("https://cam/live?X-Amz-Signature=abc&client_secret=def", "https://cam/live?X-Amz-Signature=***&client_secret=***"),
        ("https://cam/live;Token=abc", "https://cam/live;Token=***"),
        ("https://cam/live?monkey=banana&keyframe=1", "https://cam/live?monkey=banana&keyframe=1"),
        # both at once
        ("rtsp://admin:pa@ss@cam/live?apikey=K3y", "rtsp://admin:***@cam/live?apikey=***"),
    ],
)
def test_mask_url(url, masked):
    assert mask_url(url) == masked
    assert mask_url(masked) == masked, "masking is idempotent"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("cannot open rtsp://u:pw@h/s and http://a:b@c/", "cannot open rtsp://u:***@h/s and http://a:***@c/"),
        # a masked query value ends at '&', '#', whitespace or a closing quote, bracket or paren
        ("source cam: backoff (cannot open https://cam/live?token=abc123)", "source cam: backoff (cannot open https://cam/live?token=***)"),
        ("uri='https://cam/live?apikey=abc' ok", "uri='https://cam/live?apikey=***' ok"),
        ('uri="https://cam/live?apikey=abc" ok', 'uri="https://cam/live?apikey=***" ok'),
        ("[https://cam/live?sig=abc] {https://cam/?key=x}", "[https://cam/live?sig=***] {https://cam/?key=***}"),
        ("<https://cam/live?token=abc>", "<https://cam/live?token=***>"),
        ("https://cam/live?token=abc; retrying in 0.5s", "https://cam/live?token=***; retrying in 0.5s"),
        # userinfo never runs across whitespace or quotes into the next word
        ("open rtsp://cam/live failed, mail ops@example.com", "open rtsp://cam/live failed, mail ops@example.com"),
        ("'rtsp://a:pa@ss@h/s', 'x@y'", "'rtsp://a:***@h/s', 'x@y'"),
        ("(rtsp://admin:pa@ss@h/s)", "(rtsp://admin:***@h/s)"),
        ("synthetic:640x360@25", "synthetic:640x360@25"),
    ],
)
def test_mask_text(text, masked):
    assert mask_text(text) == masked


@pytest.mark.parametrize(
    ("kind", "uri", "secret"),
    [
        ("file", "rstp://admin:S3cr3t@127.0.0.1:1/live", "S3cr3t"),  # a mistyped scheme given as a file
        ("file", "rtsp://admin:S3cr3t@127.0.0.1:1/live", "S3cr3t"),
        ("auto", "/mnt/clips/rtsp://admin:S3cr3t@cam/live.mp4", "S3cr3t"),  # an absolute path ending in a URL
        ("auto", "clips/rtsp://admin:S3cr3t@cam/live.mp4", "S3cr3t"),
        ("auto", "rtsp://admin:pa@ss@127.0.0.1:1/live", "ss@127.0.0.1"),  # not just the part before the first "@"
        ("stream", "rstp://admin:S3cr3t@127.0.0.1:1/live", "S3cr3t"),
    ],
)
def test_a_source_uri_stays_maskable_after_the_config_resolves_it(tmp_path, kind, uri, secret):
    config = parse_config(
        {"sources": [{"id": "cam", "kind": kind, "uri": uri}], "model": {"path": "m.onnx", "pipeline": "detection"}},
        base_dir=tmp_path,
    )
    resolved = config.sources[0].uri
    shown = mask_url(resolved)
    assert secret not in shown and "***@" in shown, shown
    if config.sources[0].resolved_kind.value == "file":
        # the file read is the one the path names: the OS reads 'a//b' as 'a/b'
        expected = Path(uri) if Path(uri).is_absolute() else (tmp_path / uri).resolve()
        assert Path(resolved) == expected


def test_a_mistyped_scheme_is_a_config_error_that_shows_no_password():
    with pytest.raises(Exception) as caught:
        parse_config({"sources": [{"id": "cam", "uri": "rstp://admin:S3cr3t@127.0.0.1:1/live"}], "model": {"path": "m.onnx", "pipeline": "detection"}})
    assert "S3cr3t" not in str(caught.value)


def test_masking_inside_text_and_tracebacks():
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


@pytest.mark.parametrize(
    "uri",
    [
        "https://cam/live?token=abc123",
        "https://cam/live?apikey=abc123",
        'https://cam/live?token=abc"123',
        "https://cam/live?token=abc\\123",
        "rtsp://admin:pa@s\\s@cam/live?sig=abc123",
        "rtsp://admin:pa@ss@cam/live?key=abc123",
    ],
)
def test_json_log_lines_still_parse_after_masking(uri):
    record = logging.LogRecord("trtstream.sources.cam", logging.WARNING, __file__, 1, "source cam: backoff (cannot open %s)", (uri,), None)
    try:
        raise RuntimeError(f"cannot open {uri}")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    entry = json.loads(line)  # the closing quote of the message is still there
    assert "\n" not in line
    assert "abc123" not in line and "pa@s" not in line
    assert entry["message"].startswith("source cam: backoff (cannot open ") and entry["message"].endswith(")")
    assert "RuntimeError: cannot open" in entry["exception"]
