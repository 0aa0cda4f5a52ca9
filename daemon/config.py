"""The configuration: pydantic models are the single source of truth for every setting.

Every model forbids unknown keys (a typo must fail, not be ignored) and NaN/infinity in float fields,
every field has bounds where they apply, URLs and endpoints are checked by their text (scheme, host,
IP address, port), and ``load_config`` turns any problem into one line per problem that names the key path
(``sources[1].uri: ...``), raised as :class:`ConfigError` (exit code 2). Validation does no I/O beyond
reading the file; ``check_files`` separately checks that the referenced model and label files exist,
and ``daemon.preflight`` what only ``check-config`` checks (file sources, the model's tensors).
Relative paths are resolved against the config file's directory, so a config works from any cwd.
"""

from __future__ import annotations

import difflib
import os
import re
from enum import Enum
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from .errors import ConfigError
from .netaddr import check_host, check_port, is_loopback_endpoint, split_tcp_endpoint
from .analyticsconfig import LineConfig, SnapshotConfig, TrackingConfig, ZoneConfig
from .sinkconfig import MqttSinkConfig
from .opsconfig import ControlConfig, MetricsConfig, SecurityConfig, ViewConfig, WatchdogConfig
from .redact import mask_text, mask_url
from .tomlcompat import tomllib

__all__ = [
    "Config",
    "SourceConfig",
    "SourceKind",
    "DropPolicy",
    "ModelConfig",
    "EngineConfig",
    "PublisherConfig",
    "load_config",
    "parse_config",
    "check_files",
    "resolve_source_kind",
    "check_not_a_url",
    "check_stream_url",
]

SOURCE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
_SCHEME_NAMES = tuple(scheme.removesuffix("://") for scheme in _STREAM_SCHEMES)
_LISTENER_SCHEMES = ("udp", "tcp", "srt")  # FFmpeg listens with no host: udp://@:1234, srt://:9000?mode=listener
# Something that starts like a URL: a scheme-like word followed by ':' and/or '//' ('clips/a.mp4' is not).
_URL_LIKE = re.compile(r"(?P<name>[A-Za-z][A-Za-z0-9+.-]+)(?P<sep>:/*|//+)(?P<rest>.*)", re.DOTALL)


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, and so are NaN and infinity (TOML has
    ``nan`` and ``inf`` literals) in every float field: ``mean = [nan, 0, 0]`` would otherwise validate
    and turn every score into NaN, published as ``"score": null``. One setting here instead of a check
    per field, so a float field added later is covered too (opsconfig's sections do the same)."""

    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


class SourceKind(str, Enum):
    FILE = "file"
    STREAM = "stream"
    USB = "usb"
    GSTREAMER = "gstreamer"
    SYNTHETIC = "synthetic"


class DropPolicy(str, Enum):
    """What a source does when its queue is full.

    ``block``: wait for room (no frame lost; right for files read as fast as possible).
    ``drop_oldest``: discard the oldest queued frame (latency stays bounded; right for live sources).
    ``auto``: ``block`` for unpaced files, ``drop_oldest`` for everything live or paced.
    """

    AUTO = "auto"
    BLOCK = "block"
    DROP_OLDEST = "drop_oldest"


def resolve_source_kind(uri: str, kind: str = "auto") -> SourceKind:
    """The kind of a source from its URI when not given: URL scheme, device, pipeline or path."""
    if kind != "auto":
        return SourceKind(kind)
    lowered = uri.lower()
    if lowered.startswith("synthetic:"):
        return SourceKind.SYNTHETIC
    if lowered.startswith(_STREAM_SCHEMES):
        return SourceKind.STREAM
    if re.fullmatch(r"(usb:)?\d+", lowered) or lowered.startswith("/dev/video"):
        return SourceKind.USB
    if " ! " in uri:
        return SourceKind.GSTREAMER
    return SourceKind.FILE


# GStreamer source elements that deliver a camera's or the network's frames as they come: a pipeline that
# starts from one of them is live (its end is a camera gone away, to reconnect to).
_LIVE_GSTREAMER_SOURCES = frozenset({
    "rtspsrc", "rtspclientsink", "udpsrc", "tcpclientsrc", "tcpserversrc", "souphttpsrc", "srtsrc", "srtclientsrc",
    "rtmpsrc", "rtmp2src", "hlsdemux", "v4l2src", "nvarguscamerasrc", "nvv4l2camerasrc", "libcamerasrc",
    "pipewiresrc", "ximagesrc", "aravissrc", "pylonsrc", "tcambin", "uvch264src", "webrtcbin", "ndisrc",
})  # fmt: skip


def gstreamer_pipeline_is_live(pipeline: str) -> bool:
    """Whether a GStreamer pipeline's frames come from a camera or the network: one of its elements is a
    live source, an ``uridecodebin``/``urisourcebin``/``playbin`` is given a network URI, or a source is
    set ``is-live=true``. Finite otherwise (``videotestsrc num-buffers=60``, ``filesrc``)."""
    for element in (part.strip() for part in pipeline.split("!")):
        words = element.split()
        if not words:
            continue
        if words[0] in _LIVE_GSTREAMER_SOURCES:
            return True
        settings = dict(word.split("=", 1) for word in words[1:] if "=" in word)
        if settings.get("is-live", "").strip("\"'").lower() in ("true", "1", "yes"):
            return True
        if words[0] in ("uridecodebin", "uridecodebin3", "urisourcebin", "playbin", "playbin3"):
            uri = settings.get("uri", "").strip("\"'").lower()
            if uri.startswith(("rtsp", "rtmp", "http", "udp", "tcp", "srt", "v4l2")):
                return True
    return False


class ReconnectConfig(StrictModel):
    """Exponential backoff with jitter between attempts to (re)open a live source."""

    initial_delay_s: float = Field(0.5, gt=0, le=3600, description="First wait after a failure.")
    max_delay_s: float = Field(30.0, gt=0, le=86400, description="Upper bound of the doubling wait.")
    max_attempts: int = Field(0, ge=0, description="Give up after this many failed opens in a row; 0 = never.")
    open_timeout_s: float = Field(10.0, gt=0, le=600, description="OpenCV/FFmpeg open timeout for network streams.")
    read_timeout_s: float = Field(10.0, gt=0, le=600, description="OpenCV/FFmpeg read timeout for network streams.")

    @model_validator(mode="after")
    def _ordered(self) -> "ReconnectConfig":
        if self.max_delay_s < self.initial_delay_s:
            raise ValueError("max_delay_s must be >= initial_delay_s")
        return self


class SourceConfig(StrictModel):
    """One video source; one reader thread per source."""

    id: str = Field(pattern=SOURCE_ID_PATTERN, description="Unique id; part of the ZeroMQ topic.")
    # kind is declared before uri so that uri's validator sees it (pydantic validates in field order).
    kind: Literal["auto", "file", "stream", "usb", "gstreamer", "synthetic"] = "auto"
    uri: str = Field(
        min_length=1,
        description="File path, rtsp/http(s) URL, USB index ('usb:0', '0', '/dev/video0'), GStreamer pipeline "
        "ending in appsink, or 'synthetic:WIDTHxHEIGHT@FPS'.",
    )
    decoder: Literal["opencv", "nvdec", "pyav", "auto"] = Field(
        "opencv", description="'auto': NVDEC for files and network streams when the backend takes device frames and "
        "PyNvVideoCodec is there (OpenCV when it refuses the codec), OpenCV otherwise. "
        "Files and network streams: 'nvdec' decodes on the GPU (PyNvVideoCodec) into device memory, for GPU backends. "
        "Files and network streams: 'pyav' decodes with PyAV, each frame at its real size (OpenCV rescales a stream whose "
        "resolution changes to its first size)."
    )
    decoder_threads: int | None = Field(
        None, ge=0, le=64, description="OpenCV decoding threads per file or network source (FFmpeg's frame threads). "
        "Unset: 2 in the daemon (three threads beside the reader), 1 in a decoding process (decode_process = true: "
        "eight cameras a process, each decoding on its own thread, as many cameras at work as there are cores). "
        "1 = decoding on the reader thread alone, 0 = FFmpeg's own choice (one per core plus one: 17 per camera on a "
        "16-core machine).",
    )
    decode_process: bool = Field(
        False, description="Files and network streams: decode this camera in a decoding process beside the daemon (up "
        "to 8 cameras per process), so the daemon's interpreter does next to nothing per frame. NVDEC (decoder 'nvdec', "
        "or 'auto' when it picks NVDEC): one CUDA context per process, frames handed over through CUDA IPC (discrete GPUs "
        "on Linux, not Jetson). OpenCV: frames converted to BGR straight into shared memory (page-locked for the GPU). "
        "For many cameras; each process costs about 100 MB of memory.",
    )
    rtsp_transport: Literal["auto", "tcp", "udp"] = Field(
        "auto", description="RTSP sources: how RTP travels. 'tcp' interleaved in the RTSP connection (through NAT and "
        "firewalls, no loss), 'udp' (lowest latency, loses packets under load), 'auto' = FFmpeg's choice as OpenCV "
        "opens it (TCP first, then UDP).",
    )
    live: bool | None = Field(
        None, description="GStreamer pipelines: true = a camera (reconnect when it stops, drop the oldest frames when "
        "behind), false = finite (its end is an end-of-stream; no frame dropped). Unset: live when the pipeline starts "
        "from a camera or the network (rtspsrc, v4l2src, nvarguscamerasrc, udpsrc, souphttpsrc, … or is-live=true).",
    )
    loop: bool = Field(False, description="Files: start again at the end instead of ending.")
    pace: bool = Field(False, description="Files: deliver at the file's native frame rate, like a camera.")
    drop_policy: DropPolicy = DropPolicy.AUTO
    skip_when_full: bool = Field(
        True, description="Sources that drop (drop_oldest): while the queue is full, frames are gone past without "
        "being converted (OpenCV grab() without retrieve(): about a third of a 1080p frame's CPU) and counted as "
        "dropped; false: every frame is converted and the oldest queued one is dropped (fresher frames under "
        "overload, more CPU).",
    )
    queue_size: int = Field(4, ge=1, le=4096, description="Frames buffered between this reader and the batcher.")
    stale_after_frames: int = Field(
        2, ge=0, le=4096, description="Sources that drop (drop_oldest): when more frames are queued than the next batch "
        "holds, a queued frame older than this many frame intervals is dropped (counted as dropped) while a newer one "
        "is queued, so an overloaded daemon infers fresh frames instead of the ones that waited longest. A burst "
        "(frames read at once) is kept whole; the newest frame is always kept. 0: every queued frame in order, however old.",
    )
    max_frames: int | None = Field(None, ge=1, description="End the source after this many frames.")
    enabled: bool = True
    reconnect: ReconnectConfig = Field(default_factory=ReconnectConfig)
    tracking: bool | None = Field(None, description="Track this source's objects; default [tracking].enabled.")
    infer_every: int = Field(
        1, ge=1, le=1000, description="Run the model on every Nth frame; the tracker predicts the frames between "
        "(published with inferred = false). Needs tracking.",
    )

    @property
    def resolved_kind(self) -> SourceKind:
        return resolve_source_kind(self.uri, self.kind)

    @property
    def resolved_decoder_threads(self) -> int:
        """``decoder_threads`` as OpenCV gets it. In a decoding process the cameras outnumber the cores, so each
        decodes on its own thread: FFmpeg's two frame threads and its scaling thread would add three threads
        a camera (counted in the process's /proc) and no frames a core can give."""
        if self.decoder_threads is not None:
            return self.decoder_threads
        return 1 if self.decode_process else 2

    @property
    def is_live(self) -> bool:
        """Live sources produce frames whether or not we keep up; paced files behave the same way. A
        GStreamer pipeline is live when ``live`` says so or, unset, when it starts from a camera or the
        network (:func:`gstreamer_pipeline_is_live`)."""
        kind = self.resolved_kind
        if kind is SourceKind.GSTREAMER:
            return self.live if self.live is not None else gstreamer_pipeline_is_live(self.uri)
        return kind is not SourceKind.FILE or self.pace

    @property
    def ends_by_itself(self) -> bool:
        """Its end is an end (``eos`` with end_of_file), not a camera gone away to reconnect to: files,
        and GStreamer pipelines that are not live (``videotestsrc num-buffers=60 …``, ``filesrc …``)."""
        kind = self.resolved_kind
        return kind is SourceKind.FILE or (kind is SourceKind.GSTREAMER and not self.is_live)

    @property
    def effective_drop_policy(self) -> DropPolicy:
        if self.drop_policy is not DropPolicy.AUTO:
            return self.drop_policy
        return DropPolicy.DROP_OLDEST if self.is_live else DropPolicy.BLOCK

    @field_validator("uri")
    @classmethod
    def _plausible_uri(cls, uri: str, info: ValidationInfo) -> str:
        """URLs are checked here, by their text, so a typo is a config error (key ``uri``) rather than a
        "file not found" at run time. With an explicit kind = 'stream' any scheme is accepted (FFmpeg
        has more protocols than the ones ``auto`` recognises), but its host and port are still checked."""
        kind = info.data.get("kind")
        if kind is None:  # kind itself is invalid and reported on its own
            return uri
        resolved = resolve_source_kind(uri, kind)
        if kind == "auto" and resolved is SourceKind.FILE:
            check_not_a_url(uri)
        elif resolved is SourceKind.STREAM:
            check_stream_url(uri)
        return uri

    @model_validator(mode="after")
    def _resolve_relative_file(self, info: ValidationInfo) -> "SourceConfig":
        if self.resolved_kind is SourceKind.FILE:
            self.uri = _resolve_file_uri(self.uri, info)
        elif self.resolved_kind is SourceKind.SYNTHETIC:
            parse_synthetic_uri(self.uri)
        if (self.loop or self.pace) and self.resolved_kind is not SourceKind.FILE:
            raise ValueError("loop and pace apply to file sources only")
        if self.decoder == "nvdec" and self.resolved_kind not in (SourceKind.FILE, SourceKind.STREAM):
            raise ValueError("decoder = 'nvdec' applies to files and network streams (rtsp://, http(s)://, ...)")
        if self.decode_process and self.decoder == "pyav":
            raise ValueError("decode_process applies to decoder = 'nvdec', 'opencv' or 'auto', not 'pyav'")
        if self.decode_process and self.resolved_kind not in (SourceKind.FILE, SourceKind.STREAM):
            raise ValueError("decode_process applies to files and network streams (rtsp://, http(s)://, ...)")
        if self.decoder == "pyav" and self.resolved_kind not in (SourceKind.FILE, SourceKind.STREAM):
            raise ValueError("decoder = 'pyav' applies to files and network streams")
        if self.live is not None and self.resolved_kind is not SourceKind.GSTREAMER:
            raise ValueError("live applies to GStreamer pipelines only (other sources are live or not by their kind)")
        if self.rtsp_transport != "auto" and not self.uri.lower().startswith(("rtsp://", "rtsps://")):
            raise ValueError("rtsp_transport applies to rtsp:// and rtsps:// sources only")
        return self


def _close_scheme(name: str) -> str | None:
    """The supported scheme ``name`` is probably a typo of (``rstp`` -> ``rtsp``), if any."""
    close = difflib.get_close_matches(name.lower(), _SCHEME_NAMES, n=1, cutoff=0.75)
    return close[0] if close else None


def check_not_a_url(uri: str) -> None:
    """Raise ValueError when a URI that would be read as a file path is really a URL with an unknown or
    mistyped scheme (``ftp://h/x``, ``rstp://cam/x``, ``rtsp//cam/x``, ``rtsp:/cam/x``). Without this it
    is taken for a relative file name and only fails, as "file not found", once the daemon runs."""
    match = _URL_LIKE.match(uri)
    if match is None:
        return
    name, sep, rest = match["name"], match["sep"], match["rest"]
    guess = _close_scheme(name)
    if sep.startswith("://"):
        hint = f" (did you mean {guess}://?)" if guess else ""
        raise ValueError(
            f"unknown URL scheme '{name}://'{hint}; supported: {', '.join(_STREAM_SCHEMES)} "
            "(set kind = 'stream' to hand another FFmpeg protocol to OpenCV as it is)"
        )
    if guess is not None:
        # Only the corrected form is shown: mask_url finds a password only after a well-formed '://'.
        raise ValueError(f"'{name}{sep}' does not start a valid URL (did you mean {mask_url(f'{guess}://{rest}')!r}?)")


def check_stream_url(uri: str) -> None:
    """Raise ValueError when a network URL has no host (``rtsp:///x``), a host that cannot exist
    (``rtsp://999.1.1.1/x``) or a port outside 1..65535. A missing host is accepted only for the schemes
    FFmpeg can listen on (``udp://@:1234``) and only with a port. Nothing is resolved or connected."""
    try:
        parts = urlsplit(uri)
    except ValueError as exc:  # "Invalid IPv6 URL"
        raise ValueError(f"not a valid URL: {exc}") from None
    try:
        port = parts.port
    except ValueError:  # its text would show what precedes a stray '#' or '/' in a password: not shown
        raise ValueError(
            "the port must be a whole number from 1 to 65535 ('#', '/' or '?' in a password must be percent-encoded)"
        ) from None
    scheme = parts.scheme.lower()
    if not scheme or not uri[len(scheme) :].startswith("://"):
        raise ValueError("a stream URI must be a URL like 'rtsp://camera.local/stream'")
    if port is not None:
        check_port(port)
    if parts.hostname:
        check_host(parts.hostname)
    elif not (scheme in _LISTENER_SCHEMES and port is not None):
        raise ValueError(f"the {scheme}:// URL has no host (like '{scheme}://camera.local/stream')")


def parse_synthetic_uri(uri: str) -> tuple[int, int, float]:
    """``synthetic:640x360@25`` -> (640, 360, 25.0). The fps may be omitted (25)."""
    match = re.fullmatch(r"synthetic:(\d+)x(\d+)(?:@(\d+(?:\.\d+)?))?", uri.strip(), flags=re.IGNORECASE)
    if not match:
        raise ValueError("synthetic sources look like 'synthetic:640x360@25'")
    width, height = int(match[1]), int(match[2])
    fps = float(match[3] or 25)
    if not (16 <= width <= 8192 and 16 <= height <= 8192 and 0 < fps <= 1000):
        raise ValueError("synthetic size must be 16..8192 pixels and fps 0..1000")
    return width, height, fps


class PreprocessConfig(StrictModel):
    """Pixel normalisation: ``out = (pixel * scale - mean[c]) / std[c]`` in the model's channel order."""

    color: Literal["rgb", "bgr"] = "rgb"
    scale: float = Field(1 / 255, gt=0)
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    interpolation: Literal["nearest", "linear", "cubic", "area"] = "linear"

    @field_validator("std")
    @classmethod
    def _nonzero_std(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(v == 0 for v in value):
            raise ValueError("std values must be non-zero")
        return value


class DetectionConfig(StrictModel):
    score_threshold: float = Field(0.3, ge=0, le=1)
    iou_threshold: float = Field(0.45, ge=0, le=1)
    max_detections: int = Field(100, ge=1, le=10000)
    layout: Literal["auto", "yolo_objectness", "yolo_anchors_last"] = Field(
        "auto",
        description="'yolo_objectness': [N, boxes, 5+classes] (YOLOv3/v5); "
        "'yolo_anchors_last': [N, 4+classes, anchors] (YOLOv8 and later); 'auto' decides from the shape.",
    )
    pad_value: int = Field(114, ge=0, le=255, description="Grey level of the letterbox border.")
    class_agnostic_nms: bool = False


class ClassificationConfig(StrictModel):
    top_k: int = Field(5, ge=1, le=1000)
    resize_short: int | None = Field(None, ge=1, description="Short side before the centre crop; default input/0.875.")
    softmax: Literal["auto", "yes", "no"] = Field("auto", description="'auto' applies softmax unless outputs already sum to 1.")


class ModelConfig(StrictModel):
    """The model and how to pre- and post-process for it."""

    path: Path = Field(description="ONNX model file.")
    pipeline: Literal["detection", "classification"]
    id: str | None = Field(None, min_length=1, description="Model id in messages; default '<file stem>@<sha256[:12]>'.")
    input_size: tuple[int, int] | None = Field(None, description="[width, height]; default from the model's static shape.")
    labels: Path | list[str] | None = Field(None, description="Label file (one per line) or inline list.")
    output: str | None = Field(None, description="Output tensor to decode when the model has several.")
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    detection: DetectionConfig = Field(default_factory=DetectionConfig)
    classification: ClassificationConfig = Field(default_factory=ClassificationConfig)

    @field_validator("path", "labels", mode="after")
    @classmethod
    def _resolve_paths(cls, value: Any, info: ValidationInfo) -> Any:
        return _resolve(value.expanduser(), info) if isinstance(value, Path) else value

    @field_validator("input_size")
    @classmethod
    def _positive_size(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and not all(8 <= v <= 8192 for v in value):
            raise ValueError("width and height must be 8..8192")
        return value


class OnnxRuntimeConfig(StrictModel):
    intra_op_threads: int = Field(0, ge=0, le=256, description="0 = ONNX Runtime's default (all cores).")
    inter_op_threads: int = Field(1, ge=0, le=256)
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    spin_wait: bool = Field(
        False,
        description="Let ONNX Runtime's threads spin between ops. Off by default: spinning steals the cores that "
        "decode and preprocess the next batch.",
    )


class TensorRTConfig(StrictModel):
    """TensorRT build options. Every one of them is part of the engine cache fingerprint."""

    precision: Literal["fp32", "fp16", "int8", "fp8"] = Field(
        "fp16",
        description="TensorRT 10: builder flag (int8/fp8 need a Q/DQ model). TensorRT 11 is strongly typed: "
        "precision comes from the ONNX itself (make an FP16 ONNX with 'trtstream convert --fp16').",
    )
    strongly_typed: bool = Field(False, description="TensorRT 10: build a strongly typed network (always on in 11).")
    workspace_mb: int = Field(1024, ge=16, le=1 << 20)
    min_batch: int = Field(1, ge=1)
    opt_batch: int | None = Field(None, ge=1, description="Batch size tuned for; default engine.max_batch.")
    builder_optimization_level: int = Field(3, ge=0, le=5)
    hardware_compatibility: Literal["none", "ampere_plus", "same_compute_capability"] = "none"
    version_compatible: bool = Field(False, description="Plan loadable by later TensorRT versions (lean runtime).")
    plugins: list[Path] = Field(default_factory=list, description="Plugin libraries to load before building and loading.")
    dla_core: int | None = Field(None, ge=0, description="Jetson with TensorRT 10: run on this DLA core (GPU fallback on).")

    @field_validator("plugins", mode="after")
    @classmethod
    def _resolve_plugins(cls, value: list[Path], info: ValidationInfo) -> list[Path]:
        return [_resolve(p.expanduser(), info) for p in value]


class TorchConfig(StrictModel):
    half: bool = Field(True, description="Run the converted model in fp16.")
    channels_last: bool = Field(
        True,
        description="Weights and activations in NHWC memory order (the preprocessed input is converted inside the "
        "captured graph): faster convolutions on tensor-core GPUs.",
    )
    compile: bool = Field(
        False,
        description="Compile the converted model with torch.compile (TorchInductor fuses the elementwise work between "
        "the convolutions) before its CUDA graphs are captured. Costs compilation time at start (its kernels are "
        "cached in engine.cache_dir/inductor); logged and served uncompiled when the model cannot be compiled.",
    )
    device: int | None = Field(None, ge=0, description="Deprecated: use engine.device (still honoured when engine.device is not set).")
    cuda_graphs: bool | None = Field(None, description="Deprecated: use engine.cuda_graphs (still honoured when that is not set).")


class EngineConfig(StrictModel):
    backend: Literal["auto", "onnxruntime", "tensorrt", "torch"] = Field(
        "auto", description="'auto' picks tensorrt, then torch, then onnxruntime, by what this machine has."
    )
    max_batch: int = Field(8, ge=1, le=1024, description="Frames per batch across sources.")
    max_wait_ms: float = Field(5.0, ge=0, le=10000, description="How long a partial batch waits for more frames.")
    streams: int | Literal["auto"] = Field(
        "auto",
        description="Batches in flight at once (CUDA streams on a GPU), each with two buffer slots. 'auto': 3 on a GPU "
        "backend (measured best on the H100), 1 on ONNX Runtime.",
    )
    warmup: bool = Field(True, description="Run one batch before serving, so the first frame is not slow.")
    device: int = Field(0, ge=0, le=63, description="CUDA device index of the GPU backends (tensorrt, torch).")
    cuda_graphs: bool = Field(
        True,
        description="GPU backends: capture the model as CUDA graphs, per slot and per power-of-two batch size (TensorRT: "
        "execute_async_v3; torch: the forward pass): one replay per batch instead of many launches from Python. Costs "
        "GPU memory per slot; an engine that cannot be captured runs with plain enqueues (logged).",
    )
    onnxruntime: OnnxRuntimeConfig = Field(default_factory=OnnxRuntimeConfig)
    tensorrt: TensorRTConfig = Field(default_factory=TensorRTConfig)
    torch: TorchConfig = Field(default_factory=TorchConfig)
    preprocess: Literal["auto", "cpu", "gpu"] = Field(
        "auto", description="Where frames are resized and normalised; 'auto' = on the GPU when the backend can."
    )
    frame_transfer: Literal["auto", "copies", "batched", "mapped"] = Field(
        "auto",
        description="GPU preprocessing: how frames decoded into pinned memory reach the GPU. 'copies': one asynchronous "
        "copy per frame; 'batched': a batch's frames in one cudaMemcpyBatchAsync (CUDA 12.8+, else copies); 'mapped': "
        "no copy, the preprocessing kernel reads them in place (Jetson's shared memory). 'auto': see docs/benchmarks.md.",
    )
    hold_gil_for_enqueues: bool = Field(
        True,
        description="GPU backends: queue a batch's copies, kernel launches, graph launch and event without releasing Python's "
        "GIL (ctypes.PyDLL on libcuda; none of them blocks on pinned memory). Every release costs the batcher a wait "
        "behind the other threads (readers, publisher) of up to 5 ms. false: every call through cuda-bindings, which "
        "releases it. See docs/benchmarks.md.",
    )
    max_frame_size: tuple[int, int] = Field(
        (1920, 1080), description="[width, height]: the largest frame GPU preprocessing stages (buffers are sized once)."
    )
    cache_dir: Path | None = Field(
        None, description="Engine cache; default $CACHE_DIRECTORY (systemd), else $XDG_CACHE_HOME/trtstream, else ~/.cache/trtstream."
    )
    use_cache: bool = Field(True, description="Build and load engines through the cache (ONNX Runtime: its optimised model).")
    on_missing_engine: Literal["fallback", "wait", "fail"] = Field(
        "fallback",
        description="When the cached engine is missing or stale: 'fallback' serves at once with ONNX Runtime, builds in the "
        "background and switches over; 'wait' builds first; 'fail' exits (use 'trtstream engine build' ahead of time).",
    )

    @field_validator("cache_dir", mode="after")
    @classmethod
    def _resolve_cache_dir(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return _resolve(value.expanduser(), info) if value is not None else None

    @model_validator(mode="before")
    @classmethod
    def _torch_aliases(cls, data: Any) -> Any:
        """engine.torch.device and engine.torch.cuda_graphs (before the GPU runtime was shared) still work."""
        if isinstance(data, dict) and isinstance(data.get("torch"), dict):
            torch = dict(data["torch"])
            data = dict(data)
            for key in ("device", "cuda_graphs"):
                if torch.get(key) is not None and key not in data:
                    data[key] = torch[key]
            data["torch"] = torch
        return data

    @field_validator("streams", mode="wrap")
    @classmethod
    def _streams(cls, value: Any, handler: Any) -> int | str:
        """One clear message instead of one per member of the union."""
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 64):
            return value
        raise ValueError(f"must be 'auto' or a whole number from 1 to 64 (got {value!r})")

    def streams_for(self, backend: str) -> int:
        """Streams for ``backend`` (a resolved name): ``streams`` itself, or for 'auto' 3 on a GPU backend
        (0.90 -> 0.92-0.97 x engine-only on the H100, docs/benchmarks.md) and 1 on ONNX Runtime."""
        if self.streams != "auto":
            return int(self.streams)
        return 1 if backend == "onnxruntime" else 3


class ThumbnailConfig(StrictModel):
    enabled: bool = False
    max_width: int = Field(320, ge=16, le=8192)
    jpeg_quality: int = Field(75, ge=1, le=100)


class PublisherConfig(StrictModel):
    endpoints: list[str] = Field(
        default_factory=lambda: ["tcp://127.0.0.1:5560"], min_length=1, description="ZeroMQ endpoints to bind."
    )
    topic_prefix: str = Field("trtstream", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    send_hwm: int = Field(100, ge=1, le=1_000_000, description="Messages queued per subscriber before dropping.")
    linger_ms: int = Field(1000, ge=0, le=60000, description="How long to flush messages at exit.")
    heartbeat_interval_s: float = Field(2.0, gt=0, le=3600)
    queue_size: int = Field(1024, ge=1, le=1_000_000, description="Results waiting for the publisher thread.")
    hold_gil_for_sends: bool = Field(
        True, description="Send results without releasing Python's GIL (ctypes.PyDLL on pyzmq's libzmq; the sends never "
        "block): with a reader thread per camera, every release costs the publisher a wait behind them. false: pyzmq's "
        "sends, which release it. See daemon/zmq_send.py.",
    )
    queue_full_wait_s: float = Field(
        1.0, ge=0, le=60, description="With queue_size results waiting, how long inference waits for room before "
        "results are dropped: waiting sheds overload at the sources (live cameras drop their oldest frames) instead of "
        "after inference. 0 = drop at once.",
    )
    thumbnail: ThumbnailConfig = Field(default_factory=ThumbnailConfig)
    wait_for_subscribers: int = Field(
        0, ge=0, le=1000, description="Start reading sources only once this many subscriptions arrived (batch jobs, tests). "
        "Above 0 the publisher is an XPUB, which buffers what peers send it: trusted endpoints only.",
    )
    wait_for_subscribers_timeout_s: float = Field(30.0, gt=0, le=3600, description="Start anyway after this long.")
    allow_plaintext_remote: bool = Field(
        False, description="Allow tcp endpoints beyond loopback without [security.curve] (results readable by anyone on the network)."
    )
    event_topic_prefix: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="Topic prefix of event and track messages; default '<topic_prefix>-events', which a subscription to "
        "'<topic_prefix>/' does not match (and the other way round).",
    )

    @property
    def events_prefix(self) -> str:
        return self.event_topic_prefix or f"{self.topic_prefix}-events"

    def plaintext_remote_endpoints(self, curve_enabled: bool) -> list[str]:
        """The tcp endpoints that publish unencrypted beyond loopback (none with CURVE on)."""
        if curve_enabled:
            return []
        return [endpoint for endpoint in self.endpoints if not is_loopback_endpoint(endpoint)]

    @field_validator("endpoints")
    @classmethod
    def _known_transports(cls, endpoints: list[str]) -> list[str]:
        for endpoint in endpoints:
            if not re.match(r"^(tcp://[^\s]+:\d+|ipc://[^\s]+|inproc://[^\s]+)$", endpoint):
                raise ValueError(f"{endpoint!r} is not a ZeroMQ endpoint like 'tcp://127.0.0.1:5560' or 'ipc:///run/x.ipc'")
            if endpoint.startswith("tcp://"):
                split_tcp_endpoint(endpoint)  # port 1..65535 (ZeroMQ would bind 99999 as 34463), a real address
        if len(set(endpoints)) != len(endpoints):
            raise ValueError("endpoints must be unique")
        return endpoints


class LoggingConfig(StrictModel):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


class DaemonConfig(StrictModel):
    exit_when_sources_end: bool = Field(True, description="Exit 0 once every source has ended (files without loop).")
    drain_timeout_s: float = Field(10.0, gt=0, le=600, description="On SIGTERM, how long in-flight frames may take.")
    switch_interval_ms: float = Field(
        1.0, gt=0, le=100,
        description="How long a Python thread may keep the GIL while another waits for it (sys.setswitchinterval; "
        "Python's own default is 5 ms). 1 ms: with 96 NVDEC cameras on the H200 it took the results from 2524/s "
        "(10.3 % dropped, p95 372 ms) to 2857/s (1.1 %, p95 82 ms), back to back (docs/benchmarks.md).",
    )  # fmt: skip
    analytics_processes: int = Field(
        0, ge=0, le=64,
        description="Run the trackers, zones and lines in this many worker processes instead of on the completer "
        "thread (0): each has its own GIL and core, so tracking stops competing with decoding, inference and "
        "publishing for the daemon's one interpreter. Sources are dealt to the workers as they first appear. "
        "For many tracked cameras on a machine with cores to spare; a change takes effect at the next restart.",
    )  # fmt: skip
    gc_freeze: bool = Field(
        True,
        description="Once serving (and again after each engine switch), move every object alive into Python's "
        "permanent generation (gc.freeze): full garbage collections then skip the libraries and the model, which "
        "never become garbage, instead of pausing every thread while they walk them (20-60 ms on the 2-core "
        "machine with the daemon's or torch's objects alone). false: Python's default.",
    )  # fmt: skip


class Config(StrictModel):
    sources: list[SourceConfig] = Field(min_length=1)
    model: ModelConfig
    engine: EngineConfig = Field(default_factory=EngineConfig)
    publisher: PublisherConfig = Field(default_factory=PublisherConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    view: ViewConfig = Field(default_factory=ViewConfig)
    sinks: list[MqttSinkConfig] = Field(default_factory=list, description="[[sinks]]: brokers that get the messages too (README 'MQTT').")
    control: ControlConfig = Field(default_factory=ControlConfig)
    watchdog: WatchdogConfig = Field(default_factory=WatchdogConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    snapshots: SnapshotConfig = Field(default_factory=SnapshotConfig)
    zones: list[ZoneConfig] = Field(default_factory=list, description="[[zones]]: polygons per source (README 'Analytics').")
    lines: list[LineConfig] = Field(default_factory=list, description="[[lines]]: counting lines per source.")

    @model_validator(mode="after")
    def _regions_name_their_source(self) -> "Config":
        """Every zone and line names a configured source, its name is unique for that source, and its
        source is tracked (only confirmed tracks count); a source that infers every Nth frame is tracked."""
        sources = {source.id: source for source in self.sources}
        errors = []
        for key, regions in (("zones", self.zones), ("lines", self.lines)):
            seen: set[tuple[str, str]] = set()
            for index, region in enumerate(regions):
                source = sources.get(region.source)
                if source is None:
                    errors.append(((key, index, "source"), region.source, f"no source has the id {region.source!r}"))
                elif not self.tracks(source):
                    errors.append(((key, index, "source"), region.source, f"source {region.source!r} is not tracked (zones and lines count tracks)"))
                if (region.source, region.name) in seen:
                    errors.append(((key, index, "name"), region.name, f"{region.name!r} is used twice for source {region.source!r}"))
                seen.add((region.source, region.name))
        for index, source in enumerate(self.sources):
            if source.infer_every > 1 and not self.tracks(source):
                errors.append((("sources", index, "infer_every"), source.infer_every, "infer_every above 1 needs tracking (the tracker fills the frames between)"))
        if errors:
            raise ValidationError.from_exception_data(type(self).__name__, [
                InitErrorDetails(type=PydanticCustomError("analytics", message), loc=loc, input=value) for loc, value, message in errors
            ])
        return self

    def tracks(self, source: SourceConfig) -> bool:
        """Whether ``source``'s objects are tracked: detection pipelines only, per source or [tracking]."""
        if self.model.pipeline != "detection":
            return False
        return self.tracking.enabled if source.tracking is None else source.tracking

    @model_validator(mode="after")
    def _no_silent_plaintext_remote(self) -> "Config":
        """Results in clear on every interface must be a decision, not a typo (``tcp://*:5560``): a tcp
        endpoint beyond loopback needs CURVE or ``publisher.allow_plaintext_remote = true``. Metrics and
        control refuse the same without ``allow_remote``. Reported on the endpoint's own key."""
        if self.publisher.allow_plaintext_remote:
            return self
        exposed = set(self.publisher.plaintext_remote_endpoints(self.security.curve.enabled))
        errors = [
            InitErrorDetails(
                type=PydanticCustomError(
                    "plaintext_remote",
                    "refusing to publish unencrypted results beyond loopback: use 127.0.0.1 or ::1 (or ipc://), "
                    "enable [security.curve], or allow it explicitly (publisher.allow_plaintext_remote = true)",
                ),
                loc=("publisher", "endpoints", index),
                input=endpoint,
            )
            for index, endpoint in enumerate(self.publisher.endpoints)
            if endpoint in exposed
        ]
        if errors:
            raise ValidationError.from_exception_data(type(self).__name__, errors)
        return self

    @model_validator(mode="after")
    def _watchdog_sees_heartbeats(self) -> "Config":
        if self.watchdog.stall_s <= 2 * self.publisher.heartbeat_interval_s:
            raise ValueError("watchdog.stall_s must be more than twice publisher.heartbeat_interval_s")
        return self

    @field_validator("sources")
    @classmethod
    def _unique_ids(cls, sources: list[SourceConfig]) -> list[SourceConfig]:
        seen: set[str] = set()
        for source in sources:
            if source.id in seen:
                raise ValueError(f"source id {source.id!r} is used twice")
            seen.add(source.id)
        return sources

    @property
    def enabled_sources(self) -> list[SourceConfig]:
        return [s for s in self.sources if s.enabled]


def _resolve(path: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    return path if path.is_absolute() or base is None else (Path(base) / path).resolve()


def _resolve_file_uri(uri: str, info: ValidationInfo) -> str:
    """A file source's path, relative ones against the config file's directory. A path that contains
    ``://`` (a URL given with ``kind = "file"``, or a path that ends in one) is joined as text, not
    through ``Path``, which would collapse ``rtsp://admin:pw@cam`` to ``rtsp:/admin:pw@cam``: the ``//``
    is what lets ``mask_url`` find the password wherever the path is shown, and the OS reads ``a//b``
    as ``a/b``, so it names the same file."""
    if "://" not in uri:
        return str(_resolve(Path(uri).expanduser(), info))
    path = os.path.expanduser(uri)
    base = (info.context or {}).get("base_dir")
    if os.path.isabs(path) or base is None:
        return path
    return os.path.join(str(Path(base).resolve()), path)


def _key_path(loc: tuple[Any, ...], data: Any) -> str:
    """('sources', 1, 'uri') -> 'sources[1].uri' (with the source id when known)."""
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
            node = node[item] if isinstance(node, list) and item < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("id"), str) and parts[0] == "sources":
                parts[-1] += f"(id={node['id']!r})"
        else:
            if not isinstance(item, str) or item.startswith(("function-", "literal[")):
                continue
            parts.append(("." if parts else "") + item)
            node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts) or "(top level)"


def _describe(error: dict[str, Any]) -> str:
    kind, message = error["type"], error["msg"]
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; see README 'Configuration')"
    if kind == "missing":
        return "required key is missing"
    message = message.removeprefix("Value error, ")
    value = error.get("input")
    if isinstance(value, (str, int, float, bool)) and kind not in ("value_error",):
        message += f" (got {mask_text(repr(value))})"
    return message


def parse_config(data: dict[str, Any], *, origin: str = "<config>", base_dir: Path | None = None) -> Config:
    """Validate a config mapping; raise ConfigError with one line per problem."""
    try:
        return Config.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        problems = [f"{origin}: {_key_path(tuple(e['loc']), data)}: {_describe(e)}" for e in exc.errors()]
        raise ConfigError(problems) from None


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: config file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read config file: {exc}"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: invalid TOML: {exc}"]) from None
    return parse_config(data, origin=str(path), base_dir=path.resolve().parent)


def check_files(config: Config, origin: str = "<config>") -> list[str]:
    """Problems with files the daemon cannot start without (model, labels); empty when all is well."""
    problems = []
    if not config.model.path.is_file():
        problems.append(f"{origin}: model.path: model file not found: {config.model.path}")
    if isinstance(config.model.labels, Path) and not config.model.labels.is_file():
        problems.append(f"{origin}: model.labels: label file not found: {config.model.labels}")
    return problems
