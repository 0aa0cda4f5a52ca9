"""``trtstream check-config`` checks what it says it does: the real CLI on real TOML files and real ONNX
models. Each mistake is exit 2 and exactly one line, ``trtstream: error: FILE: KEY: ...``, no traceback;
each of these configs passed with exit 0 before the checks existed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from daemon.cli import main
from daemon.config import parse_config
from daemon.errors import ConfigError

from .conftest import REPO, asset

DETECTOR = "models/yolov3_tiny_416.onnx"
CLASSIFIER = "models/efficientnet_lite0.onnx"


def write_config(tmp_path: Path, sources: str, *, model: str = DETECTOR, pipeline: str = "detection", extra: str = "") -> Path:
    """A config that is valid except for what the test puts in ``sources`` or ``extra``."""
    model_path = asset(model) if not Path(model).is_absolute() else Path(model)
    path = tmp_path / "bad.toml"
    path.write_text(f'{sources}\n[model]\npath = "{model_path}"\npipeline = "{pipeline}"\n{extra}\n')
    return path


def source(uri: str, source_id: str = "cam", kind: str | None = None) -> str:
    return f'[[sources]]\nid = "{source_id}"\nuri = "{uri}"\n' + (f'kind = "{kind}"\n' if kind else "")


def check_config(path: Path, capsys) -> tuple[int, list[str], str]:
    """(exit code, stderr lines, stdout) of ``trtstream check-config PATH``, run in this process."""
    code = main(["check-config", str(path)])
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines(), captured.out


def assert_one_error(path: Path, capsys, key: str, expected: str | tuple[str, ...]) -> str:
    code, lines, out = check_config(path, capsys)
    assert code == 2, (code, lines, out)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"trtstream: error: {path}: {key}: "), lines[0]
    assert any(text in lines[0] for text in ((expected,) if isinstance(expected, str) else expected)), lines[0]
    assert "Traceback" not in lines[0] and ": ok" not in out
    return lines[0]


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("rstp://cam/x", "unknown URL scheme 'rstp://' (did you mean rtsp://?)"),
        ("htpp://cam/x", "unknown URL scheme 'htpp://' (did you mean http://?)"),
        ("ftp://host/x", "unknown URL scheme 'ftp://'; supported: rtsp://"),
        ("file:///data/a.mp4", "unknown URL scheme 'file://'"),
        ("rtsp//cam/x", "'rtsp//' does not start a valid URL (did you mean 'rtsp://cam/x'?)"),
        ("rtsp:/cam/x", "did you mean 'rtsp://cam/x'?"),
        ("rtsp://", "the rtsp:// URL has no host"),
        ("rtsp:///stream", "the rtsp:// URL has no host"),
        ("http://", "the http:// URL has no host"),
        ("udp://", "the udp:// URL has no host"),
        ("rtsp://999.1.1.1/x", "'999.1.1.1' is not a valid IPv4 address"),
        ("rtsp://10.0.1/x", "'10.0.1' is not a valid IPv4 address"),
        # Python 3.11's urlsplit refuses the bracketed host itself; 3.10's passes it on to ipaddress.
        ("rtsp://[fe80::zz]/x", ("not a valid URL", "'fe80::zz' is not a valid IPv6 address")),
        ("rtsp://cam:99999/x", "the port must be a whole number from 1 to 65535"),
        ("rtsp://cam:0/x", "port must be 1..65535 (got 0)"),
        ("rtsp://cam x/y", "'cam x' is not a valid host name or address"),
    ],
)
def test_a_bad_url_is_one_line_on_the_source_uri(tmp_path, capsys, uri, expected):
    path = write_config(tmp_path, source("synthetic:64x64", "ok") + source(uri, "door"))
    assert_one_error(path, capsys, "sources[1](id='door').uri", expected)


def test_a_password_in_a_mistyped_url_is_masked(tmp_path, capsys):
    path = write_config(tmp_path, source("rtsp//admin:hunter2@cam/x"))
    line = assert_one_error(path, capsys, "sources[0](id='cam').uri", "did you mean 'rtsp://admin:***@cam/x'?")
    assert "hunter2" not in line


@pytest.mark.parametrize(
    ("uri", "kind"),
    [
        ("rtsp://user:pw@10.0.0.2:554/stream", None),
        ("RTSP://Camera.local/live", None),
        ("rtsp://[::1]:8554/x", None),
        ("https://example.com/live.m3u8", None),
        ("udp://@:1234", None),
        ("udp://@239.0.0.1:1234", None),
        ("srt://:9000?mode=listener", None),
        ("rtp://10.0.0.2:5004", "stream"),  # a protocol auto does not know, passed through on request
        ("synthetic:64x64@5", None),
        ("videotestsrc ! videoconvert ! appsink", None),
    ],
)
def test_valid_uris_still_pass(tmp_path, capsys, uri, kind):
    path = write_config(tmp_path, source(uri, kind=kind))
    code, lines, out = check_config(path, capsys)
    assert (code, lines) == (0, []) and ": ok" in out


def test_a_missing_file_source_is_named_by_its_key(tmp_path, capsys):
    clip = asset("media/bikes.mp4")
    path = write_config(tmp_path, source(str(clip), "street") + source("clips/door.mp4", "door"))
    assert_one_error(path, capsys, "sources[1](id='door').uri", f"file not found: {tmp_path / 'clips' / 'door.mp4'}")


def test_a_directory_as_file_source_is_refused_and_a_disabled_source_is_not_checked(tmp_path, capsys):
    (tmp_path / "clips").mkdir()
    sources = source("clips", "dir") + source("later.mp4", "later") + "enabled = false\n"
    path = write_config(tmp_path, sources)
    assert_one_error(path, capsys, "sources[0](id='dir').uri", "not a file but a directory")


@pytest.mark.parametrize(
    ("extra", "key", "value"),
    [
        ("[model.preprocess]\nmean = [nan, 0, 0]", "model.preprocess.mean[0]", "nan"),
        ("[model.preprocess]\nstd = [1, inf, 1]", "model.preprocess.std[1]", "inf"),
        ("[model.preprocess]\nscale = inf", "model.preprocess.scale", "inf"),
        ("[model.detection]\nscore_threshold = nan", "model.detection.score_threshold", "nan"),
        ("[engine]\nmax_wait_ms = inf", "engine.max_wait_ms", "inf"),
        ("[publisher]\nheartbeat_interval_s = nan", "publisher.heartbeat_interval_s", "nan"),
        ("[watchdog]\nstall_s = inf", "watchdog.stall_s", "inf"),
        ("[daemon]\ndrain_timeout_s = nan", "daemon.drain_timeout_s", "nan"),
        ("[daemon]\nswitch_interval_ms = inf", "daemon.switch_interval_ms", "inf"),
    ],
)
def test_nan_and_infinity_are_refused_in_float_settings(tmp_path, capsys, extra, key, value):
    path = write_config(tmp_path, source("synthetic:64x64"), extra=extra)
    assert_one_error(path, capsys, key, f"Input should be a finite number (got {value})")


def test_nan_in_a_source_setting_is_refused():
    data = {"sources": [{"id": "a", "uri": "rtsp://cam/x", "reconnect": {"max_delay_s": float("inf")}}],
            "model": {"path": "m.onnx", "pipeline": "detection"}}
    with pytest.raises(ConfigError) as caught:
        parse_config(data, origin="x.toml")
    assert caught.value.problems == ["x.toml: sources[0](id='a').reconnect.max_delay_s: Input should be a finite number (got inf)"]


@pytest.mark.parametrize(
    ("extra", "key", "expected"),
    [
        ('[publisher]\nendpoints = ["tcp://127.0.0.1:99999"]', "publisher.endpoints", "'tcp://127.0.0.1:99999': port must be 1..65535 (got 99999)"),
        ('[publisher]\nendpoints = ["tcp://127.0.0.1:0"]', "publisher.endpoints", "port must be 1..65535 (got 0)"),
        ('[publisher]\nendpoints = ["tcp://999.1.1.1:5560"]', "publisher.endpoints", "'999.1.1.1' is not a valid IPv4 address"),
        ('[control]\nendpoint = "tcp://127.0.0.1:99999"', "control.endpoint", "port must be 1..65535 (got 99999)"),
        ('[control]\nendpoint = "tcp://999.1.1.1:7000"\nallow_remote = true', "control.endpoint", "'999.1.1.1' is not a valid IPv4 address"),
        ('[metrics]\nenabled = true\naddress = "999.1.1.1"\nallow_remote = true', "metrics.address", "'999.1.1.1' is not a valid IPv4 address"),
    ],
)
def test_endpoints_need_a_real_address_and_port(tmp_path, capsys, extra, key, expected):
    path = write_config(tmp_path, source("synthetic:64x64"), extra=extra)
    assert_one_error(path, capsys, key, expected)


def test_valid_endpoints_still_pass(tmp_path, capsys):
    extra = '[publisher]\nendpoints = ["tcp://*:5560", "tcp://[::1]:5561", "tcp://127.0.0.1:65535", "ipc:///tmp/x.ipc"]\nallow_plaintext_remote = true'
    path = write_config(tmp_path, source("synthetic:64x64"), extra=extra)
    code, lines, out = check_config(path, capsys)
    assert (code, lines) == (0, []) and ": ok" in out


def test_a_text_file_named_onnx_is_not_a_model(tmp_path, capsys):
    fake = tmp_path / "model.onnx"
    fake.write_text("this is not a model\n")
    path = write_config(tmp_path, source("synthetic:64x64"), model=str(fake))
    assert_one_error(path, capsys, "model.path", "ONNX Runtime cannot load the model")


def test_a_classifier_configured_as_a_detector_is_refused(tmp_path, capsys):
    path = write_config(tmp_path, source("synthetic:64x64"), model=CLASSIFIER, pipeline="detection")
    assert_one_error(path, capsys, "model.pipeline", "shape [-1, 1000] is not a detector's")


def test_a_classifier_with_an_explicit_detection_layout_is_still_refused(tmp_path, capsys):
    extra = '[model.detection]\nlayout = "yolo_objectness"'
    path = write_config(tmp_path, source("synthetic:64x64"), model=CLASSIFIER, pipeline="detection", extra=extra)
    assert_one_error(path, capsys, "model.pipeline", "set model.pipeline = 'classification'")


def test_a_detector_configured_as_a_classifier_is_refused(tmp_path, capsys):
    path = write_config(tmp_path, source("synthetic:64x64"), model=DETECTOR, pipeline="classification")
    assert_one_error(path, capsys, "model.pipeline", "shape [-1, 2535, 85] is not a classifier's [N, classes]")


def test_a_label_count_that_fits_no_layout_is_named(tmp_path, capsys):
    path = write_config(tmp_path, source("synthetic:64x64"), extra='labels = ["person", "car"]')
    assert_one_error(path, capsys, "model.labels", "fits neither [N, boxes, 5+2] nor [N, 4+2, anchors]")


def test_an_unknown_output_name_is_named(tmp_path, capsys):
    path = write_config(tmp_path, source("synthetic:64x64"), extra='output = "boxes"')
    assert_one_error(path, capsys, "model.output", "no output named 'boxes'; the model has ['output']")


@pytest.mark.parametrize(("model", "pipeline"), [(DETECTOR, "detection"), (CLASSIFIER, "classification")])
def test_the_real_models_pass_with_their_pipeline(tmp_path, capsys, model, pipeline):
    path = write_config(tmp_path, source(str(asset("media/bikes.mp4"))), model=model, pipeline=pipeline)
    code, lines, out = check_config(path, capsys)
    assert (code, lines) == (0, []) and f"({pipeline})" in out


def test_every_problem_is_its_own_line(tmp_path, capsys):
    path = write_config(tmp_path, source("missing.mp4", "a") + source("also-missing.mp4", "b"), model=CLASSIFIER)
    code, lines, _ = check_config(path, capsys)
    assert code == 2
    assert [line.split(": ")[3] for line in lines] == ["sources[0](id='a').uri", "sources[1](id='b').uri", "model.pipeline"]


def test_the_installed_command_exits_2_with_one_line(tmp_path):
    """The real entry point in a subprocess, for both commands that load a config: a NaN is refused by
    the schema, so ``run`` refuses it too instead of publishing ``"score": null``."""
    path = write_config(tmp_path, source("synthetic:64x64"), extra="[model.preprocess]\nmean = [nan, 0, 0]")
    for command in ("check-config", "run"):
        result = subprocess.run([sys.executable, "-m", "daemon", command, str(path)], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result
        assert result.stderr.strip().splitlines() == [
            f"trtstream: error: {path}: model.preprocess.mean[0]: Input should be a finite number (got nan)"
        ]


def test_a_switch_interval_of_zero_is_refused_with_its_key(tmp_path, capsys):
    path = write_config(tmp_path, source("synthetic:64x64"), extra="[daemon]\nswitch_interval_ms = 0")
    assert_one_error(path, capsys, "daemon.switch_interval_ms", "greater than 0")
