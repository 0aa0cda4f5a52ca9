"""Config validation: every mistake is one line naming the key path, exit code 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from daemon.config import DropPolicy, SourceKind, load_config, parse_config, resolve_source_kind
from daemon.errors import ConfigError

from .conftest import REPO, asset

MINIMAL = {"sources": [{"id": "cam1", "uri": "video.mp4"}], "model": {"path": "m.onnx", "pipeline": "detection"}}


def problems_of(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, origin="x.toml")
    return caught.value.problems


def with_source(**fields) -> dict:
    return {**MINIMAL, "sources": [{"id": "cam1", "uri": "video.mp4", **fields}]}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"model": MINIMAL["model"]}, "x.toml: sources: required key is missing"),
        ({**MINIMAL, "sources": []}, "x.toml: sources: List should have at least 1 item"),
        (with_source(pase=True), "x.toml: sources[0](id='cam1').pase: unknown key"),
        (with_source(rtsp_transport="tcp"), "x.toml: sources[0](id='cam1'): rtsp_transport applies to rtsp:// and rtsps:// sources only"),
        (with_source(uri="rtsp://cam.local/x", rtsp_transport="quic"),
         "x.toml: sources[0](id='cam1').rtsp_transport: Input should be 'auto', 'tcp' or 'udp' (got 'quic')"),
        (with_source(decode_process=True, decoder="pyav"),
         "x.toml: sources[0](id='cam1'): decode_process applies to decoder = 'nvdec', 'opencv' or 'auto', not 'pyav'"),
        (with_source(uri="usb:0", decode_process=True),
         "x.toml: sources[0](id='cam1'): decode_process applies to files and network streams (rtsp://, http(s)://, ...)"),
        (with_source(queue_size=0), "x.toml: sources[0](id='cam1').queue_size: Input should be greater than or equal to 1 (got 0)"),
        (with_source(drop_policy="newest"), "x.toml: sources[0](id='cam1').drop_policy: Input should be 'auto', 'block' or 'drop_oldest'"),
        ({**MINIMAL, "sources": [{"id": "cam 1", "uri": "a.mp4"}]}, "x.toml: sources[0](id='cam 1').id: String should match pattern"),
        ({**MINIMAL, "sources": [{"id": "_heartbeat", "uri": "a.mp4"}]}, "sources[0](id='_heartbeat').id: String should match pattern"),
        ({**MINIMAL, "sources": [{"id": "a", "uri": "x.mp4"}, {"id": "a", "uri": "y.mp4"}]}, "x.toml: sources: source id 'a' is used twice"),
        ({**MINIMAL, "sources": [{"id": "a", "uri": "rtsp://h/s", "loop": True}]}, "sources[0](id='a'): loop and pace apply to file sources only"),
        ({**MINIMAL, "sources": [{"id": "a", "uri": "synthetic:10x10"}]}, "synthetic size must be 16..8192"),
        ({**MINIMAL, "model": {"path": "m.onnx", "pipeline": "segmentation"}}, "x.toml: model.pipeline: Input should be 'detection' or 'classification' (got 'segmentation')"),
        ({**MINIMAL, "model": {"pipeline": "detection"}}, "x.toml: model.path: required key is missing"),
        ({**MINIMAL, "engine": {"max_batch": "eight"}}, "x.toml: engine.max_batch: Input should be a valid integer, unable to parse string as an integer (got 'eight')"),
        ({**MINIMAL, "engine": {"backend": "tensorflow"}}, "x.toml: engine.backend: Input should be 'auto', 'onnxruntime', 'tensorrt' or 'torch'"),
        ({**MINIMAL, "publisher": {"endpoints": ["localhost:5555"]}}, "x.toml: publisher.endpoints: 'localhost:5555' is not a ZeroMQ endpoint"),
        ({**MINIMAL, "model": {**MINIMAL["model"], "preprocess": {"std": [1, 0, 1]}}}, "model.preprocess.std: std values must be non-zero"),
        ({**MINIMAL, "colour": 1}, "x.toml: colour: unknown key"),
    ],
)
def test_each_mistake_is_one_line_naming_the_key(data, expected):
    problems = problems_of(data)
    assert len(problems) == 1, problems
    assert expected in problems[0]
    assert "\n" not in problems[0]


def test_several_mistakes_give_one_line_each():
    problems = problems_of({**MINIMAL, "sources": [{"id": "a", "uri": "x", "bogus": 1}], "engine": {"streams": 0}})
    assert len(problems) == 2
    assert any("sources[0](id='a').bogus" in p for p in problems)
    assert any("engine.streams" in p for p in problems)


@pytest.mark.parametrize("value", [0, 65, "two", True, 1.5])
def test_engine_streams_is_auto_or_a_count_in_one_clear_line(value):
    problems = problems_of({**MINIMAL, "engine": {"streams": value}})
    assert len(problems) == 1 and "engine.streams" in problems[0] and "'auto' or a whole number from 1 to 64" in problems[0], problems


def test_engine_streams_auto_means_three_on_a_gpu_backend_and_one_on_onnxruntime():
    from daemon.config import EngineConfig

    auto = EngineConfig()
    assert auto.streams == "auto"
    assert (auto.streams_for("onnxruntime"), auto.streams_for("torch"), auto.streams_for("tensorrt")) == (1, 3, 3)
    fixed = EngineConfig(streams=2)
    assert (fixed.streams_for("onnxruntime"), fixed.streams_for("torch")) == (2, 2)


def test_source_kinds_and_default_drop_policies():
    assert resolve_source_kind("rtsp://user:pw@10.0.0.2/stream") is SourceKind.STREAM
    assert resolve_source_kind("https://example.com/live.m3u8") is SourceKind.STREAM
    assert resolve_source_kind("usb:1") is SourceKind.USB
    assert resolve_source_kind("0") is SourceKind.USB
    assert resolve_source_kind("/dev/video2") is SourceKind.USB
    assert resolve_source_kind("videotestsrc ! videoconvert ! appsink") is SourceKind.GSTREAMER
    assert resolve_source_kind("synthetic:640x480@30") is SourceKind.SYNTHETIC
    assert resolve_source_kind("clips/a.mp4") is SourceKind.FILE
    config = parse_config(
        {
            **MINIMAL,
            "sources": [
                {"id": "file", "uri": "a.mp4"},
                {"id": "paced", "uri": "a.mp4", "pace": True},
                {"id": "cam", "uri": "rtsp://h/s"},
            ],
        }
    )
    policies = {s.id: s.effective_drop_policy for s in config.sources}
    assert policies == {"file": DropPolicy.BLOCK, "paced": DropPolicy.DROP_OLDEST, "cam": DropPolicy.DROP_OLDEST}


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "c.toml"
    path.write_text('[[sources]]\nid = "a"\nuri = "../v.mp4"\n[model]\npath = "m.onnx"\npipeline = "detection"\nlabels = "l.txt"\n')
    config = load_config(path)
    assert config.sources[0].uri == str(tmp_path / "v.mp4")
    assert config.model.path == tmp_path / "sub" / "m.onnx"
    assert config.model.labels == tmp_path / "sub" / "l.txt"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "daemon", *args], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_check_config_accepts_the_shipped_configs():
    asset("models/yolov3_tiny_416.onnx")
    asset("models/efficientnet_lite0.onnx")
    for name in ("default.toml", "classification.toml"):
        result = run_cli("check-config", str(REPO / "configs" / name))
        assert result.returncode == 0, result.stderr
        assert ": ok" in result.stdout


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[sources]]\nid = "a"\nuri = "v.mp4"\n[model]\npath = "m.onnx"\npipeline = "detection"\nthreshold = 0.5\n', "model.threshold: unknown key"),
        ('[[sources]]\nid = "a"\nuri = "v.mp4"\n[model\n', "invalid TOML"),
        ('[[sources]]\nid = "a"\nuri = "v.mp4"\n[model]\npath = "missing.onnx"\npipeline = "detection"\n', "model.path: model file not found"),
    ],
)
def test_bad_config_exits_2_with_one_line_and_no_traceback(tmp_path, text, expected):
    path = tmp_path / "bad.toml"
    path.write_text(textwrap.dedent(text))
    for command in ("check-config", "run"):
        result = run_cli(command, str(path))
        assert result.returncode == 2, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(f"trtstream: error: {path}") and expected in lines[0]
        assert "Traceback" not in result.stderr


def test_missing_config_file_is_a_one_line_error(tmp_path):
    result = run_cli("check-config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"trtstream: error: {tmp_path / 'nope.toml'}: config file not found"
