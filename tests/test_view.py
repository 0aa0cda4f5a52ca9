"""The live view (issue 14, item 1) with real parts: the daemon on a real clip and model, its HTTP view read
by a real headless Chromium (Debian's ``chromium``; screenshots checked pixel by pixel where a known
detection, the zone and the line are), by urllib (MJPEG parts, counters in heartbeats) and by a raw
socket that never reads (a stalled viewer). Every wait is a poll with a deadline."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from daemon.client import ResultSubscriber
from daemon.netaddr import free_loopback_port
from daemon.view.annotate import LINE_COLOR, ZONE_COLOR, color_for

from .conftest import all_ended, asset, bikes_frames, collect, detector_config, missing

VIEW_WIDTH = 480
ZONE = [[0.05, 0.55], [0.6, 0.55], [0.6, 0.95], [0.05, 0.95]]
LINE = [[0.8, 0.35], [0.8, 0.95]]



@pytest.fixture(scope="module")
def still_clip(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """Three seconds of one bikes frame at 25 fps: every frame gets the same detections, so the test
    knows what the browser must show whenever it looks."""
    frame = bikes_frames((60,))[0]
    path = tmp_path_factory.mktemp("view") / "still.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (frame.shape[1], frame.shape[0]))
    for _ in range(75):
        writer.write(frame)
    writer.release()
    decoded = cv2.VideoCapture(str(path)).read()[1]  # what the daemon sees (after the codec)
    return path, decoded


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        missing("needs a headless browser: apt install chromium (.ci/run installs it)")
    return found


def view_config(uri: str, port: int, view_port: int, *, sources_extra: str = "", extra: str = "") -> str:
    polygon = ", ".join(f"[{x}, {y}]" for x, y in ZONE)
    points = ", ".join(f"[{x}, {y}]" for x, y in LINE)
    return detector_config(
        f'[[sources]]\nid = "still"\nuri = "{uri}"\n{sources_extra}\n', port, engine="max_batch = 2\nmax_wait_ms = 5",
    ) + (
        "\n[tracking]\nenabled = true\n"
        f'[[zones]]\nname = "path"\nsource = "still"\ncoordinates = "normalized"\npolygon = [{polygon}]\n'
        f'[[lines]]\nname = "gate"\nsource = "still"\ncoordinates = "normalized"\npoints = [{points}]\n'
        f"[view]\nenabled = true\nport = {view_port}\nwidth = {VIEW_WIDTH}\nfps = 10\n"
        f"[control]\nenabled = false\n[daemon]\nexit_when_sources_end = false\n{extra}"
    )  # fmt: skip


def screenshot(browser: str, url: str, path: Path, size: tuple[int, int]) -> np.ndarray:
    """A real Chromium's rendering of ``url`` (headless, device scale 1), as BGR."""
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--force-device-scale-factor=1",
               f"--window-size={size[0]},{size[1]}", "--virtual-time-budget=4000", f"--user-data-dir={path.parent / 'chromium-profile'}",
               f"--screenshot={path}", url]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and path.is_file(), f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
    image = cv2.imread(str(path))
    assert image is not None, f"{path}: not an image"
    directory = os.environ.get("TRTSTREAM_SCREENSHOTS")  # where the README's screenshot comes from
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(directory) / path.name)
    return image


def near(pixel: np.ndarray, color: tuple[int, int, int], tolerance: int = 70) -> bool:
    return bool(np.abs(pixel.astype(int) - np.array(color)).max() <= tolerance)


def results(messages):
    return [m for m in messages if m.type == "result"]


def heartbeats(messages):
    return [m.header for m in messages if m.type == "heartbeat"]


def view_counters(messages) -> dict:
    beats = heartbeats(messages)
    return beats[-1]["view"] if beats else {}


def wait_for_view(view_port: int, daemon, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert daemon.process.poll() is None, daemon.stderr[-3000:]
        try:
            with socket.create_connection(("127.0.0.1", view_port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)  # a poll with a deadline: the view listens once the model is loaded
    raise AssertionError(f"the view did not listen on {view_port} within {timeout}s")


def mjpeg_parts(url: str, count: int, timeout: float = 30.0) -> list[bytes]:
    """The first ``count`` JPEGs of a multipart/x-mixed-replace stream."""
    parts: list[bytes] = []
    with urllib.request.urlopen(url, timeout=timeout) as response:
        assert response.headers.get_content_type() == "multipart/x-mixed-replace"
        buffer = b""
        while len(parts) < count:
            chunk = response.read1(65536)
            assert chunk, "the stream ended"
            buffer += chunk
            while True:
                start, end = buffer.find(b"\xff\xd8"), buffer.find(b"\xff\xd9")
                if start < 0 or end < 0 or end < start:
                    break
                parts.append(buffer[start : end + 2])
                buffer = buffer[end + 2 :]
    return parts


def test_the_live_view_in_a_real_browser_shows_the_boxes_the_zone_and_the_line(start_daemon, free_port, still_clip, chromium, tmp_path):
    clip, frame = still_clip
    view_port = free_loopback_port()
    with ResultSubscriber(f"tcp://127.0.0.1:{free_port}") as subscriber:
        daemon = start_daemon(view_config(str(clip), free_port, view_port, sources_extra="pace = true\nloop = true"))
        collect(subscriber, lambda ms: len(results(ms)) >= 10, timeout=120, daemon=daemon)
        page = screenshot(chromium, f"http://127.0.0.1:{view_port}/sources/still", tmp_path / "view-source.png", (VIEW_WIDTH + 20, 320))
        index = screenshot(chromium, f"http://127.0.0.1:{view_port}/", tmp_path / "view-index.png", (700, 400))
        after = collect(subscriber, lambda ms: len(results(ms)) >= 5 and heartbeats(ms), timeout=60, daemon=daemon)
        daemon.terminate()
        collect(subscriber, all_ended, timeout=60, daemon=daemon)
        assert daemon.wait(30) == 0, daemon.stderr
    scale = VIEW_WIDTH / frame.shape[1]
    raw = cv2.resize(frame, (VIEW_WIDTH, round(frame.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    detections = results(after)[-1].header["detections"]
    assert detections, "the still frame has detections (bikes frame 60)"
    def inner_edge(d) -> float | None:  # a vertical edge of the box at least 3 px inside the picture (one at the border blurs away)
        x1, x2 = d["box"][0] * scale, d["box"][2] * scale
        return x1 if x1 >= 3 else (x2 if x2 <= VIEW_WIDTH - 4 else None)

    candidates = [d for d in detections if (d["box"][3] - d["box"][1]) * scale >= 20 and inner_edge(d) is not None]
    assert candidates, detections
    best = max(candidates, key=lambda d: d["score"])
    edge, y1, y2 = inner_edge(best), best["box"][1] * scale, best["box"][3] * scale
    color = color_for(best)
    # a vertical edge of the box, at five heights: drawn in its colour in the browser, which the frame itself is not
    samples = [(int(round(edge)), int(round(y1 + (y2 - y1) * f))) for f in (0.3, 0.4, 0.5, 0.6, 0.7)]
    drawn = [any(near(page[y, x + dx], color) for dx in (-1, 0, 1)) for x, y in samples]  # a 2-pixel line around x
    assert sum(drawn) >= 3, f"{best} not drawn at {samples}: {[page[y, x].tolist() for x, y in samples]} (expected {color})"
    assert sum(near(raw[y, x], color, 40) for x, y in samples) <= 1, "the frame itself has the box colour there: the check proves nothing"
    # the zone's top edge and the line, at their configured places
    height, width = raw.shape[:2]
    zone_y = int(round(ZONE[0][1] * height))
    zone_xs = [int(round(width * x)) for x in (0.15, 0.3, 0.45)]
    assert sum(near(page[zone_y, x], ZONE_COLOR) or near(page[zone_y + 1, x], ZONE_COLOR) for x in zone_xs) >= 2, \
        [page[zone_y, x].tolist() for x in zone_xs]  # fmt: skip
    line_x = int(round(LINE[0][0] * width))
    line_ys = [int(round(height * y)) for y in (0.6, 0.7, 0.8)]
    assert sum(near(page[y, line_x], LINE_COLOR) or near(page[y, line_x - 1], LINE_COLOR) for y in line_ys) >= 2, \
        [page[y, line_x].tolist() for y in line_ys]  # fmt: skip
    # the index: the source's snapshot with the zone on it (somewhere on the page: the layout is the browser's)
    zone_pixels = int(np.all(np.abs(index.astype(int) - np.array(ZONE_COLOR)) <= 60, axis=2).sum())
    assert zone_pixels >= 100, f"the index page shows no snapshot with the zone drawn ({zone_pixels} zone-coloured pixels)"


def test_the_view_draws_only_while_watched_and_a_stalled_viewer_costs_no_result(start_daemon, free_port, still_clip):
    """No viewer: nothing captured, drawn or encoded (heartbeat counters). A stream read by urllib beside a
    viewer that connects and never reads: real JPEG parts at the view's width. Once both have gone,
    capturing stops again."""
    clip, _ = still_clip
    view_port = free_loopback_port()
    with ResultSubscriber(f"tcp://127.0.0.1:{free_port}") as subscriber:
        daemon = start_daemon(view_config(str(clip), free_port, view_port, sources_extra="pace = true\nloop = true"))
        wait_for_view(view_port, daemon)
        unwatched = collect(subscriber, lambda ms: len(results(ms)) >= 15 and view_counters(ms), timeout=120, daemon=daemon)
        assert view_counters(unwatched) == {"viewers": 0, "frames_captured": 0, "frames_dropped": 0, "pictures": 0, "draw_errors": 0}
        stalled = socket.create_connection(("127.0.0.1", view_port))
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(b"GET /sources/still/stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")  # and never read again
        try:
            parts = mjpeg_parts(f"http://127.0.0.1:{view_port}/sources/still/stream.mjpg", 3)
            assert all(cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_COLOR).shape[1] == VIEW_WIDTH for p in parts)
            watched = collect(subscriber, lambda ms: len(results(ms)) >= 50 and view_counters(ms).get("pictures", 0) >= 3, timeout=120, daemon=daemon)
        finally:
            stalled.close()
        published = collect(subscriber, lambda ms: view_counters(ms).get("viewers") == 0, timeout=60, daemon=daemon)
        first = view_counters(published)["frames_captured"]
        later = collect(subscriber, lambda ms: len(results(ms)) >= 40 and view_counters(ms), timeout=120, daemon=daemon)
        daemon.terminate()
        ended = collect(subscriber, all_ended, timeout=60, daemon=daemon)
        assert daemon.wait(30) == 0, daemon.stderr
    assert view_counters(watched)["frames_captured"] > 0
    assert view_counters(later)["frames_captured"] == first, "frames were still captured with nobody watching"
    assert heartbeats(ended)[-1]["final"]
    assert "Traceback" not in daemon.stderr


def test_a_stalled_viewer_of_a_file_never_costs_a_result(start_daemon, free_port, tmp_path):
    """A file (not paced: the reader waits for the pipeline, nothing is dropped) watched by a viewer that
    never reads: every one of its frames is published."""
    view_port = free_loopback_port()
    config = detector_config(f'[[sources]]\nid = "still"\nuri = "{asset("media/bikes.mp4")}"\nmax_frames = 60\n', free_port) + (
        f"\n[view]\nenabled = true\nport = {view_port}\nwidth = 320\nfps = 30\nqueue_size = 2\n[control]\nenabled = false\n"
    )  # fmt: skip
    daemon = start_daemon(config)
    wait_for_view(view_port, daemon)
    stalled = socket.create_connection(("127.0.0.1", view_port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(b"GET /sources/still/stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        with ResultSubscriber(f"tcp://127.0.0.1:{free_port}") as subscriber:
            messages = collect(subscriber, all_ended, timeout=180, daemon=daemon)
    finally:
        stalled.close()
    assert daemon.wait(30) == 0, daemon.stderr
    end = next(m.header for m in messages if m.type == "eos")
    assert (end["frames_captured"], end["frames_published"], end["frames_dropped"]) == (60, 60, 0), end
    assert len(results(messages)) == 60
    assert heartbeats(messages)[-1]["view"]["frames_captured"] > 0, "the stalled viewer was never served"


def test_a_view_on_a_remote_address_needs_allow_remote(start_daemon, free_port):
    config = detector_config(f'[[sources]]\nid = "a"\nuri = "{asset("media/bikes.mp4")}"\n', free_port) + (
        '\n[view]\nenabled = true\naddress = "0.0.0.0"\n'
    )
    daemon = start_daemon(config)
    assert daemon.wait(60) == 2
    lines = [line for line in daemon.stderr.splitlines() if line.strip()]
    assert any("view" in line and "allow_remote" in line for line in lines), daemon.stderr
    assert "Traceback" not in daemon.stderr


def test_a_view_port_in_use_is_one_line_and_exit_1(start_daemon, free_port):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = detector_config(f'[[sources]]\nid = "a"\nuri = "{asset("media/bikes.mp4")}"\n', free_port) + (
            f"\n[view]\nenabled = true\nport = {port}\n[control]\nenabled = false\n"
        )
        daemon = start_daemon(config)
        assert daemon.wait(120) == 1
    assert f"view: cannot listen on 127.0.0.1:{port}" in daemon.stderr, daemon.stderr
    assert "Traceback" not in daemon.stderr
