"""Faults a camera daemon meets in the field, each against the real daemon and a real peer: a network
camera that stalls, one that drops and comes back, and an engine cache that cannot be written.
(A subscriber that never reads, SIGTERM mid-batch and SIGHUP with an invalid config are in
test_daemon.py and test_reload.py.)"""

from __future__ import annotations

from daemon.client import ResultSubscriber

from .conftest import all_ended, asset, collect, detector_config
from .mjpeg_server import MjpegCamera


def camera_config(url: str, port: int, **reconnect: float) -> str:
    settings = {"initial_delay_s": 0.2, "max_delay_s": 1.0, "open_timeout_s": 2, "read_timeout_s": 1, **reconnect}
    lines = "".join(f"{key} = {value}\n" for key, value in settings.items())
    return detector_config(
        f'[[sources]]\nid = "ipcam"\nuri = "{url}"\n[sources.reconnect]\n{lines}', port, engine="max_batch = 2\nmax_wait_ms = 5"
    ) + "\n[daemon]\nexit_when_sources_end = false\n"


def results(messages):
    return [m for m in messages if m.type == "result"]


def source_state(messages) -> list[str]:
    return [s["state"] for m in messages if m.type == "heartbeat" for s in m.header["sources"]]


def test_a_stalled_camera_is_detected_and_reconnected(start_daemon, free_port):
    camera = MjpegCamera()
    try:
        with ResultSubscriber(f"tcp://127.0.0.1:{free_port}") as subscriber:
            daemon = start_daemon(camera_config(camera.url("viewer:s3cret@"), free_port))
            collect(subscriber, lambda ms: len(results(ms)) >= 10, timeout=60, daemon=daemon)
            camera.mode = "stall"  # connection stays open, no bytes, no error
            stalled = collect(subscriber, lambda ms: "backoff" in source_state(ms), timeout=30, daemon=daemon)
            assert "backoff" in source_state(stalled)
            camera.mode = "serve"
            resumed = collect(subscriber, lambda ms: len(results(ms)) >= 10, timeout=60, daemon=daemon)
            beat = collect(subscriber, lambda ms: any(m.type == "heartbeat" for m in ms), timeout=30, daemon=daemon)[-1]
            daemon.terminate()
            collect(subscriber, all_ended, timeout=60, daemon=daemon)
            assert daemon.wait(30) == 0, daemon.stderr
    finally:
        camera.close()
    assert len(results(resumed)) >= 10
    source = beat.header["sources"][0]
    assert source["reconnects"] >= 1 and source["state"] == "running"
    assert camera.connections >= 2
    assert source["uri"].startswith("http://viewer:***@"), "heartbeats show the camera with its password masked"
    assert "s3cret" not in daemon.stderr and "s3cret" not in str(beat.header)


def test_a_camera_that_drops_and_comes_back_is_served_again(start_daemon, free_port):
    camera = MjpegCamera()
    try:
        with ResultSubscriber(f"tcp://127.0.0.1:{free_port}") as subscriber:
            daemon = start_daemon(camera_config(camera.url(), free_port))
            before = collect(subscriber, lambda ms: len(results(ms)) >= 10, timeout=60, daemon=daemon)
            camera.mode = "down"  # connections cut, new ones refused with 503
            down = collect(subscriber, lambda ms: source_state(ms).count("backoff") >= 2, timeout=30, daemon=daemon)
            camera.mode = "serve"
            after = collect(subscriber, lambda ms: len(results(ms)) >= 10, timeout=60, daemon=daemon)
            daemon.terminate()
            ended = collect(subscriber, all_ended, timeout=60, daemon=daemon)
            assert daemon.wait(30) == 0, daemon.stderr
    finally:
        camera.close()
    sequence = [m.header["seq"] for m in before + down + after + ended if m.type in ("result", "eos")]
    assert sequence == list(range(sequence[0], sequence[0] + len(sequence))), "no published message was lost"
    (eos,) = [m for m in ended if m.type == "eos"]
    assert eos.header["reason"] == "shutdown"
    assert eos.header["frames_published"] == eos.header["frames_captured"] - eos.header["frames_dropped"]
    heartbeat = [m for m in ended if m.type == "heartbeat"][-1]
    assert heartbeat.header["sources"][0]["reconnects"] >= 1


def test_an_unwritable_engine_cache_keeps_serving_with_a_warning(start_daemon, free_port, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the cache directory should be")
    config = detector_config(
        f'[[sources]]\nid = "bikes"\nuri = "{asset("media/bikes.mp4")}"\nmax_frames = 40\n',
        free_port,
        engine=f'max_batch = 4\nbackend = "onnxruntime"\ncache_dir = "{blocker / "cache"}"',
    )
    with ResultSubscriber(f"tcp://127.0.0.1:{free_port}") as subscriber:
        daemon = start_daemon(config)
        messages = collect(subscriber, all_ended, timeout=120, daemon=daemon)
        assert daemon.wait(30) == 0, daemon.stderr
    assert [m.header["frame"]["index"] for m in results(messages)] == list(range(40))
    assert "cannot write the engine cache" in daemon.stderr
    assert blocker.read_text() == "a file where the cache directory should be", "nothing half-written in its place"
