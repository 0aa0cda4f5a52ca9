"""The ``trtstream`` command: run, check-config, subscribe, engine, convert, track.

Exit codes: 0 success (also a stop by SIGTERM/SIGINT, even during start-up, and a run whose sources
ended with at least one ending normally); 1 a runtime failure (model cannot load, endpoint in use); 2 an
invalid config or command line; 3 ``run`` ended because every source failed for good (each ended with
reason "error": file not found, ``reconnect.max_attempts`` exhausted; the systemd units do not restart
on it). User mistakes print one line per problem on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .config import Config, check_files, load_config
from .errors import ConfigError, TrtstreamError, UsageError

if TYPE_CHECKING:
    from .analyticsconfig import TrackingConfig
    from .client import Message, ResultSubscriber

__all__ = ["main"]

log = logging.getLogger("trtstream")

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.toml"


def load_checked(config_path: Path) -> Config:
    """A valid config whose model and label files exist, or ConfigError (one line per problem)."""
    config = load_config(config_path)
    problems = check_files(config, str(config_path))
    if problems:
        raise ConfigError(problems)
    return config


def _load(path: str | None) -> tuple[Config, str]:
    config_path = Path(path) if path else DEFAULT_CONFIG
    return load_checked(config_path), str(config_path)


def cmd_check_config(args: argparse.Namespace) -> int:
    """Everything ``run`` would refuse, plus what it would only find out while running (a missing source
    file, a model that does not fit its pipeline): see daemon/preflight.py."""
    from .preflight import preflight

    config, origin = _load(args.config)
    problems = preflight(config, origin)
    if problems:
        raise ConfigError(problems)
    sources = ", ".join(f"{s.id} ({s.resolved_kind.value})" for s in config.enabled_sources)
    print(f"{origin}: ok — model {config.model.path.name} ({config.model.pipeline}), backend {config.engine.backend}, sources: {sources}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .signals import StartupSignals

    early_signals = StartupSignals.install()  # first: SIGHUP's default action would kill a starting daemon
    import faulthandler

    from .logs import configure_logging

    faulthandler.enable()  # a watchdog SIGABRT dumps every thread's stack to the journal
    from .limits import raise_nofile_limit
    from .service import Daemon

    config, origin = _load(args.config)
    configure_logging(config.logging, args.log_level)
    _log_start_up(raise_nofile_limit(), config)
    daemon = Daemon(config, Path(origin))
    early_signals.hand_over(daemon, origin)
    log.info("starting with %s", origin)
    code = daemon.run()
    if daemon.native_work_left:
        # An engine build is still inside native code; letting the interpreter tear down under it would
        # abort the process (std::terminate) and turn a clean stop into a failure. Leave at once.
        log.warning("exiting with an engine build still running (it will be redone at the next start)")
        logging.shutdown()
        os._exit(code)
    return code


def _log_start_up(nofile: tuple[int, int, int], config: Config) -> None:
    """The open-file limit (debug) and, once, each plaintext publisher endpoint that the config opted
    into exposing beyond loopback (``publisher.allow_plaintext_remote``)."""
    before, soft, hard = nofile
    if soft != before:
        log.debug("open files: soft limit raised from %d to %d (hard %d)", before, soft, hard)
    else:
        log.debug("open files: soft limit %d (hard %d)", soft, hard)
    exposed = config.publisher.plaintext_remote_endpoints(config.security.curve.enabled)
    if exposed:
        log.warning(
            "publisher: %s unencrypted and unauthenticated beyond loopback (publisher.allow_plaintext_remote = true); "
            "anyone who can reach it reads every result: enable [security.curve] to encrypt",
            ", ".join(exposed),
        )


def _track_tag(detection: dict) -> str:
    """`` #12`` for a confirmed track's detection, `` #12?`` tentative, `` #12~`` predicted; nothing untracked."""
    track_id = detection.get("track_id")
    if track_id is None:
        return ""
    mark = "?" if detection.get("track_state") == "tentative" else "" if detection.get("matched_now", True) else "~"
    return f" #{track_id}{mark}"


def _format_message(message, show_heartbeats: bool) -> str | None:
    header = message.header
    kind = message.type
    if kind == "heartbeat":
        if not show_heartbeats:
            return None
        parts = [f"{s['id']}:{s['state']} {s['fps']}fps pub={s['frames_published']} drop={s['frames_dropped']}" for s in header["sources"]]
        return f"[heartbeat] backend={header['backend']['name'] if header.get('backend') else '?'} " + " | ".join(parts)
    if kind == "event":
        place = f"zone {header['zone']}" if "zone" in header else f"line {header['line']} {header['direction']}"
        return f"{header['source_id']}: {header['event']} {place}: {header['label']} #{header['track_id']} at frame {header['frame_index']}"
    if kind == "track":
        return (f"{header['source_id']}: track #{header['track_id']} {header['label']} ended ({header['reason']}), "
                f"{header['frames']} frames over {header['duration_s']:.1f}s, best {header['best_score']:.2f}")
    if kind == "eos":
        return f"{header['source_id']}: end of stream ({header['reason']}{': ' + header['detail'] if header.get('detail') else ''}), {header['frames_published']} results"
    stamps = header["timestamps"]
    latency_ms = (stamps["published"] - stamps["captured"]) * 1000
    prefix = f"{header['source_id']} #{header['frame']['index']:<5} seq={header['seq']:<5} {latency_ms:6.1f}ms"
    if "detections" in header:
        items = [f"{d['label']}{_track_tag(d)} {d['score']:.2f} [{', '.join(f'{v:.0f}' for v in d['box'])}]" for d in header["detections"]]
        return f"{prefix}  {len(items)} det: " + ("; ".join(items) if items else "-")
    if "classifications" in header:
        return f"{prefix}  " + ", ".join(f"{c['label']} {c['score']:.2f}" for c in header["classifications"])
    return prefix


def cmd_subscribe(args: argparse.Namespace) -> int:
    """Print what a daemon publishes until told to stop. A stdout closed by its reader (``| head -1``)
    ends it quietly with exit 0: the reader took what it wanted, which is how such a pipeline is meant
    to end, and 0 (not 141, the shell's status for SIGPIPE) keeps ``set -o pipefail`` scripts passing."""
    stopped = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopped
        stopped = True

    signal.signal(signal.SIGTERM, on_signal)
    with _open_subscriber(args) as subscriber:
        try:
            return _print_messages(subscriber, args, lambda: stopped)
        except KeyboardInterrupt:
            return 0
        except BrokenPipeError:
            _silence_stdout()
            return 0


def _open_subscriber(args: argparse.Namespace) -> ResultSubscriber:
    """The subscriber the flags describe; a bad endpoint or key file is a UsageError (one line, exit 2)."""
    from .client import ResultSubscriber

    if (args.server_key is None) != (args.client_key is None):
        raise UsageError("subscribe: --server-key and --client-key go together (CURVE needs both)")
    return ResultSubscriber(
        args.endpoint,
        args.source or None,
        topic_prefix=args.topic_prefix,
        curve_server_key=Path(args.server_key) if args.server_key else None,
        curve_client_keys=args.client_key,
        events=args.events,
    )


def _print_messages(subscriber: ResultSubscriber, args: argparse.Namespace, stopped: Callable[[], bool]) -> int:
    """The receive loop of ``subscribe``: print, warn once about what cannot work, stop on --count,
    --until-eos or --timeout."""
    received = 0
    ended: set[str] = set()
    sources_checked = not args.source
    reported_handshake: str | None = None
    while not stopped():
        message = subscriber.receive(timeout=args.timeout if args.timeout else 0.5)
        if subscriber.handshake_failure != reported_handshake:
            reported_handshake = subscriber.handshake_failure
            _warn(reported_handshake)
        if message is None:
            if args.timeout:
                print(f"no message within {args.timeout}s from {args.endpoint}", file=sys.stderr)
                return 1
            continue
        if message.type == "heartbeat" and not sources_checked:
            sources_checked = True  # the first heartbeat names the daemon's sources
            _warn(_unknown_sources(args.source, message.header))
        line = _render(message, args)
        if line is not None:
            print(line, flush=True)
        if message.type == "result":
            received += 1
        if message.type == "eos":
            ended.add(message.source_id)
            done = set(args.source) <= ended if args.source else message.header.get("sources_remaining") == 0
            if args.until_eos and done:
                break
        if args.count and received >= args.count:
            break
    return 0


def _render(message: Message, args: argparse.Namespace) -> str | None:
    """The line to print for ``message``, or None; heartbeats only with --heartbeats, in both modes."""
    if args.json:
        if message.type == "heartbeat" and not args.heartbeats:
            return None
        return json.dumps(message.header, ensure_ascii=False)
    return _format_message(message, args.heartbeats)


def _unknown_sources(wanted: list[str], heartbeat: dict) -> str | None:
    """A warning when --source names ids the daemon does not have: filtering on a typo would otherwise
    wait forever in silence."""
    known = [source["id"] for source in heartbeat.get("sources", [])]
    unknown = [source for source in wanted if source not in known]
    if not unknown:
        return None
    return f"the daemon has no source {', '.join(map(repr, unknown))} (its sources: {', '.join(known) or 'none'})"


def _warn(text: str | None) -> None:
    if text:
        print(f"trtstream: warning: {text}", file=sys.stderr, flush=True)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of what is still buffered does not
    raise BrokenPipeError again (and print a traceback) on the way out."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def cmd_track(args: argparse.Namespace) -> int:
    """Track a MOTChallenge detection file offline (daemon/tracking/mot.py), with the ``[tracking]``
    settings of ``--config`` (defaults without one)."""
    from .analyticsconfig import TrackingConfig
    from .tracking.mot import run_mot

    config = load_tracking_section(Path(args.config)) if args.config else TrackingConfig()
    counts = run_mot(Path(args.mot_det), Path(args.out), config)
    print(
        f"{args.mot_det}: {counts['frames']} frames, {counts['detections']} detections -> "
        f"{counts['tracks']} tracks, {counts['boxes']} boxes written to {args.out}"
    )
    return 0


def load_tracking_section(path: Path) -> TrackingConfig:
    """Only the ``[tracking]`` table of a config file, validated as TrackingConfig: the rest of a config
    (sources, a model) is what ``track`` has no use for, so a file holding just ``[tracking]`` is enough.
    Problems are a ConfigError with check-config's ``file: key: problem`` lines."""
    from pydantic import ValidationError

    from .analyticsconfig import TrackingConfig
    from .config import _describe, _key_path
    from .tomlcompat import tomllib

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{path}: config file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read config file: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: invalid TOML: {exc}"]) from None
    section = data.get("tracking", {})
    if not isinstance(section, dict):
        raise ConfigError([f"{path}: tracking: must be a table ([tracking])"])
    try:
        return TrackingConfig.model_validate(section)
    except ValidationError as exc:
        raise ConfigError([f"{path}: {_key_path(('tracking', *e['loc']), data)}: {_describe(e)}" for e in exc.errors()]) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trtstream", description="Edge video inference daemon.")
    parser.add_argument("--version", action="version", version=f"trtstream {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the daemon")
    run.add_argument("config", nargs="?", help=f"TOML config (default: {DEFAULT_CONFIG})")
    run.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="override logging.level")
    run.set_defaults(handler=cmd_run)

    check = commands.add_parser("check-config", help="validate a config file and exit (0 ok, 2 invalid)")
    check.add_argument("config", nargs="?")
    check.set_defaults(handler=cmd_check_config)

    sub = commands.add_parser("subscribe", help="print results as they arrive")
    sub.add_argument("endpoint", help="e.g. tcp://127.0.0.1:5560 or ipc:///run/trtstream/results.ipc")
    sub.add_argument("--source", action="append", help="only this source id (repeatable)")
    sub.add_argument("--json", action="store_true", help="print each message header as one JSON line")
    sub.add_argument("--heartbeats", action="store_true", help="also print heartbeats (text and --json)")
    sub.add_argument("--events", action="store_true", help="also print zone, line and track events (their own topic)")
    sub.add_argument("--count", type=int, default=0, help="exit after this many results")
    sub.add_argument("--until-eos", action="store_true", help="exit once every (selected) source has ended")
    sub.add_argument("--timeout", type=float, default=0, help="exit 1 if nothing arrives for this many seconds")
    sub.add_argument("--topic-prefix", default="trtstream")
    sub.add_argument("--server-key", metavar="FILE", help="CURVE: the daemon's public key (DIR/server.key from 'trtstream keys generate')")
    sub.add_argument("--client-key", metavar="FILE", help="CURVE: this subscriber's secret key (DIR/NAME.key_secret, mode 0600)")
    sub.set_defaults(handler=cmd_subscribe)

    track = commands.add_parser(
        "track",
        help="track a MOTChallenge detection file offline (ByteTrack) and write MOTChallenge results",
        description="Run the daemon's tracker over MOTChallenge detections (frame,id,x,y,w,h,score[,...]) and "
        "write frame,id,x,y,w,h,score,-1,-1,-1 for confirmed tracks, for scoring against ground truth.",
    )
    track.add_argument("--mot-det", required=True, metavar="DET.txt", help="MOTChallenge detection file")
    track.add_argument("--out", required=True, metavar="OUT.txt", help="results file (replaced atomically)")
    track.add_argument("--config", metavar="CONFIG.toml", help="use this file's [tracking] section (default: built-in defaults)")
    track.set_defaults(handler=cmd_track)

    bench = commands.add_parser(
        "bench",
        help="benchmarks measured side by side in one run: 'bench cpu [...]', 'bench gpu [...]' or 'bench decode [...]' "
        "(default: gpu when this machine can; 'bench cpu --help' lists the options)",
        description="Benchmarks measured side by side in one run. 'trtstream bench cpu': ONNX Runtime "
        "engine-only against the whole daemon, alternating rounds. 'trtstream bench gpu': engine-only, naive "
        "and pipeline modes on an NVIDIA GPU. 'trtstream bench decode': the machine's decode ceiling with N "
        "parallel OpenCV captures and no inference. Without a target: gpu when this machine can run it, else cpu. "
        "'trtstream bench cpu --help', 'trtstream bench gpu --help' and 'trtstream bench decode --help' list each one's options.",
    )
    bench.add_argument("target", nargs="?", choices=["cpu", "gpu", "decode"])

    from .engine.commands import add_engine_commands

    add_engine_commands(commands, _load)
    from .control import add_status_command
    from .security import add_keys_commands

    add_status_command(commands)
    add_keys_commands(commands)
    try:
        from .convert import add_convert_commands
    except ImportError:  # pragma: no cover - the module is part of the package
        pass
    else:
        add_convert_commands(commands)
    return parser


def cmd_bench(argv: list[str]) -> int:
    """``trtstream bench [cpu|gpu] [options]``: the options belong to the benchmark, so they are passed on
    unparsed (argparse would claim them)."""
    target = argv[0] if argv[:1] and argv[0] in ("cpu", "gpu", "decode") else None
    rest = argv[1:] if target else argv
    if target is None and {"-h", "--help"} & set(rest):
        build_parser().parse_args(["bench", "--help"])  # both benchmarks named, not the one this machine picks; exits 0
    if target is None:
        from .backends.torch import torch_usable

        target = "gpu" if torch_usable() else "cpu"
    if target == "gpu":
        from .bench.gpu import main as bench_main
    elif target == "decode":
        from .bench.decode import main as bench_main
    else:
        from .bench.cpu import main as bench_main
    return bench_main(rest)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        return cmd_bench(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except TrtstreamError as exc:  # UserError, BackendError, PublisherError...: one line each, no traceback
        for line in str(exc).splitlines():
            print(f"trtstream: error: {line}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
