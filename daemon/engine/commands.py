"""``trtstream engine build|inspect|list|prune``: the engine cache from the command line.

``build`` is for ahead-of-time builds (an image build, a provisioning step) so the daemon's first start
is a cache hit; ``inspect`` shows an engine's IO tensors, fingerprint and size; ``list`` and ``prune``
keep the cache tidy. ``prune`` never removes an engine a running daemon has loaded (it says which it
kept), and refuses ``--keep`` below 1, which would delete the engine the next start needs.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from ..config import Config
from ..errors import UsageError
from .builders import create_builder
from .cache import CacheMiss, EngineCache, default_cache_dir

__all__ = ["add_engine_commands"]

ConfigLoader = Callable[[str | None], tuple[Config, str]]


def _cache_for(args: argparse.Namespace, load: ConfigLoader) -> tuple[EngineCache, Config | None]:
    config = None
    if getattr(args, "config", None):
        config, _ = load(args.config)
    directory = args.cache_dir or (config.engine.cache_dir if config else None) or default_cache_dir()
    return EngineCache(Path(directory)), config


def _describe_backend(backend) -> list[str]:
    info = backend.info
    lines = [f"backend   {info.name} {info.version} on {info.device}, max batch {info.max_batch}"]
    for role, specs in (("input ", info.inputs), ("output", info.outputs)):
        for spec in specs:
            lines.append(f"{role}    {spec.name}  {spec.dtype}  {list(spec.shape)}")
    return lines


def cmd_build(args: argparse.Namespace, load: ConfigLoader) -> int:
    from ..logs import configure_logging

    cache, config = _cache_for(args, load)
    configure_logging(config.logging)
    builder = create_builder(config.model, config.engine, args.backend)
    started = time.monotonic()
    # uncached=False: its job is the cache entry, so a cache it cannot write is an error (exit 1), not a
    # build that is thrown away (an image build would pass without an engine).
    obtained = cache.obtain(
        builder, config.model.path, lambda fraction, message: print(f"  {fraction:4.0%} {message}", flush=True), uncached=False
    )
    obtained.backend.close()
    print(f"{obtained.outcome}: {obtained.entry.artifact} ({obtained.entry.size} bytes, {time.monotonic() - started:.1f}s)")
    return 0


def cmd_inspect(args: argparse.Namespace, load: ConfigLoader) -> int:
    cache, config = _cache_for(args, load)
    builder = create_builder(config.model, config.engine, args.backend)
    try:
        obtained = cache.load_cached(builder, config.model.path)
    except CacheMiss as miss:
        print(f"no usable cached engine: {miss.reason}")
        return 1
    meta = obtained.entry.meta
    print(f"engine    {obtained.entry.artifact}")
    print(f"size      {obtained.entry.size} bytes, built {_when(meta.get('created'))} in {meta.get('build_seconds')}s")
    for line in _describe_backend(obtained.backend):
        print(line)
    print("fingerprint " + json.dumps(meta["fingerprint"], indent=2, sort_keys=True))
    obtained.backend.close()
    return 0


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return "?"
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def cmd_list(args: argparse.Namespace, load: ConfigLoader) -> int:
    cache, _ = _cache_for(args, load)
    entries = cache.entries()
    print(f"cache {cache.directory}: {len(entries)} engine(s)")
    for entry in entries:
        used = entry.sidecar.stat().st_mtime
        print(f"  {entry.name}  {entry.backend:<12} {entry.size:>12} bytes  built {_when(entry.meta.get('created'))}  used {_when(used)}")
    return 0


def cmd_prune(args: argparse.Namespace, load: ConfigLoader) -> int:
    if args.keep < 1:  # refused before the cache is touched: 0 or less would delete every engine
        raise UsageError(f"--keep {args.keep}: must be at least 1 (the newest engine per model and backend is the one the next start loads)")
    cache, _ = _cache_for(args, load)
    older = args.older_than_days * 86400 if args.older_than_days is not None else None
    pruned = cache.prune(keep=args.keep, older_than_s=older, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for name in pruned.in_use:
        print(f"kept {name}: in use by a running process")
    for name, why in pruned.unchecked.items():
        print(f"kept {name}: cannot tell whether a running process uses it ({why})")
    for path in pruned.removed:
        print(f"{verb} {path}")
    print(f"{verb} {len(pruned.removed)} file(s) from {cache.directory}")
    return 0


def add_engine_commands(commands: argparse._SubParsersAction, load: ConfigLoader) -> None:
    engine = commands.add_parser("engine", help="build, inspect, list and prune cached engines")
    actions = engine.add_subparsers(dest="engine_command", required=True)

    def common(parser: argparse.ArgumentParser, with_config: bool) -> None:
        if with_config:
            parser.add_argument("config", nargs="?", help="daemon config (default: configs/default.toml)")
            parser.add_argument("--backend", choices=["onnxruntime", "tensorrt"], help="instead of engine.backend")
        else:
            parser.add_argument("--config", help="take the cache directory from this config")
        parser.add_argument("--cache-dir", help="cache directory (default: engine.cache_dir, $CACHE_DIRECTORY, XDG cache)")

    build = actions.add_parser("build", help="build the config's engine ahead of time (no-op when cached)")
    common(build, True)
    build.set_defaults(handler=lambda a: cmd_build(a, load))
    inspect = actions.add_parser("inspect", help="show the config's cached engine: IO tensors, fingerprint, size")
    common(inspect, True)
    inspect.set_defaults(handler=lambda a: cmd_inspect(a, load))
    listing = actions.add_parser("list", help="list cached engines")
    common(listing, False)
    listing.set_defaults(handler=lambda a: cmd_list(a, load))
    prune = actions.add_parser("prune", help="remove stale engines and leftovers of interrupted builds")
    common(prune, False)
    prune.add_argument("--keep", type=int, default=1, help="engines kept per model and backend (most recently used; at least 1)")
    prune.add_argument("--older-than-days", type=float, help="also remove engines unused for this many days")
    prune.add_argument("--dry-run", action="store_true")
    prune.set_defaults(handler=lambda a: cmd_prune(a, load))
