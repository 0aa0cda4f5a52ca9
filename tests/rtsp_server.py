"""A real RTSP server for the tests: gst-rtsp-server through PyGObject (Debian's ``gir1.2-gst-rtsp-server-1.0``
and ``python3-gi``, which ``.ci/run`` installs), run by the *system* python3 in a subprocess of its own
(PyGObject belongs to the system interpreter, not to the test venv; tests/conftest.py's ``rtsp_server``
fixture starts it).

It serves ``rtsp://127.0.0.1:PORT/cam``: a live camera — GStreamer's moving test pattern encoded by x264
(H.264, zero latency, an IDR every second), RTP over UDP or interleaved in the RTSP/TCP connection, as the
client asks — optionally behind basic authentication. Commands on stdin, one per line, each acknowledged on
stdout once applied:

  stall    the camera stops sending, the RTSP session stays open (a valve before the encoder drops frames)
  resume   it sends again

It prints ``ready <port>`` once it listens, and ``client <n>`` each time a client connects.

Usage: /usr/bin/python3 tests/rtsp_server.py --port PORT [--user U --password P] [--transport tcp|udp|any]
       [--size 320x240] [--fps 15]
"""

from __future__ import annotations

import argparse
import sys
import threading

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument("--transport", choices=["tcp", "udp", "any"], default="any",
                        help="the lower transports the server accepts (a client asking for another cannot set up)")
    args = parser.parse_args()
    Gst.init(None)
    width, height = args.size.split("x")
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f"( videotestsrc is-live=true pattern=ball ! video/x-raw,width={width},height={height},framerate={args.fps}/1 "
        f"! valve name=valve drop=false ! videoconvert ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={args.fps} "
        f"! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )
    transports = {"tcp": GstRtsp.RTSPLowerTrans.TCP, "udp": GstRtsp.RTSPLowerTrans.UDP,
                  "any": GstRtsp.RTSPLowerTrans.TCP | GstRtsp.RTSPLowerTrans.UDP}  # fmt: skip
    factory.set_protocols(transports[args.transport])
    factory.set_shared(True)  # one camera: every client (and every reconnect) sees the same media
    valves: list[Gst.Element] = []
    stalled = [False]

    def media_configured(_factory, media) -> None:
        valve = media.get_element().get_by_name("valve")
        valve.set_property("drop", stalled[0])  # a client that reconnects to a stalled camera finds it stalled too
        valves.append(valve)

    factory.connect("media-configure", media_configured)
    if args.user:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", "camera-user")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password), token)
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_permission_for_role("camera-user", "media.factory.access", True)
        permissions.add_permission_for_role("camera-user", "media.factory.construct", True)
        factory.set_permissions(permissions)
    server.get_mount_points().add_factory("/cam", factory)
    clients = [0]

    def client_connected(_server, _client) -> None:
        clients[0] += 1
        print(f"client {clients[0]}", flush=True)

    server.connect("client-connected", client_connected)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        return 1
    loop = GLib.MainLoop()

    def apply(command: str) -> bool:
        stalled[0] = command == "stall"
        for valve in valves:
            valve.set_property("drop", command == "stall")
        print(f"valves {len(valves)}", flush=True)  # for a failing test's message: how many media it reached
        print({"stall": "stalled", "resume": "resumed"}[command], flush=True)
        return False

    def read_commands() -> None:
        for line in sys.stdin:
            command = line.strip()
            if command in ("stall", "resume"):
                GLib.idle_add(apply, command)
        GLib.idle_add(loop.quit)  # stdin closed: the test is done with us

    threading.Thread(target=read_commands, daemon=True).start()
    print(f"ready {args.port}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
