"""A real HTTP MJPEG camera for fault tests (multipart/x-mixed-replace, as IP cameras serve it), on
loopback, that the test can make stall (connection open, no bytes) or drop (connections cut, 503)."""

from __future__ import annotations

import http.server
import socketserver
import threading
import time

import cv2
import numpy as np

__all__ = ["MjpegCamera"]


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class MjpegCamera:
    """``mode``: 'serve' (20 fps), 'stall' (keep connections, send nothing), 'down' (cut and refuse)."""

    def __init__(self, fps: float = 20.0):
        self.mode = "serve"
        self.frames_sent = 0
        self.connections = 0
        ok, jpeg = cv2.imencode(".jpg", np.full((120, 160, 3), 128, np.uint8))
        self._jpeg = jpeg.tobytes()
        self._interval = 1.0 / fps
        camera = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                if camera.mode == "down":
                    self.send_error(503)
                    return
                camera.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    while camera.mode != "down":
                        if camera.mode == "stall":
                            time.sleep(0.02)
                            continue
                        part = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(camera._jpeg)
                        self.wfile.write(part + camera._jpeg + b"\r\n")
                        camera.frames_sent += 1
                        time.sleep(camera._interval)
                except (BrokenPipeError, ConnectionResetError):
                    return

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, credentials: str = "") -> str:
        return f"http://{credentials}127.0.0.1:{self._server.server_address[1]}/stream.mjpg"

    def close(self) -> None:
        self.mode = "down"
        self._server.shutdown()
        self._server.server_close()
