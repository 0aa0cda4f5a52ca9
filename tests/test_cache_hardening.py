"""The engine cache in hostile and faulty environments (issue 11: findings 3, 4, 10, 11, the symlinked lock
file of 14, and the timing cache shared by every GPU), with real parts: the real ONNX Runtime builder on the
real YOLOv3-tiny model, real filesystems (a full tmpfs, a read-only mount), a real unprivileged user
(``nobody``) and real ``python -m daemon`` processes. The TensorRT side runs on the CPU doubles.

Mounting needs root (CAP_SYS_ADMIN) and the unprivileged runs need root to drop to ``nobody``: those tests
are skipped, with the reason, where that is impossible."""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from daemon.engine.cache import EngineCache

from .conftest import REPO, asset, detector_config
from .test_engine_cache import builder_for, engine_build, model, write_config  # noqa: F401 (model: a fixture)


def one_error_line(stderr: str) -> str:
    """The command's error: the last line, ``trtstream: error: ...``, the only one of its kind, no traceback."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("trtstream: error:")]
    assert len(errors) == 1 and stderr.strip().splitlines()[-1] == errors[0], stderr
    return errors[0]


# -- real filesystems: a full one, a read-only one ---------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str, readonly: bool = False):
    """A real tmpfs of ``size`` at ``path`` (remounted read-only when asked); unmounted on the way out."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        if readonly:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def cache_files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


# -- finding 3: prune deletes files outside the cache ------------------------------------------------------


@pytest.mark.parametrize("named", ["relative", "absolute", "another-entry"])
def test_prune_never_removes_a_file_a_sidecar_names_outside_its_entry(tmp_path, model, named):
    """A planted sidecar naming ``../outside/victim``, an absolute path, or another entry's artifact: prune
    (as root, unused for days) removes none of them, warns naming the sidecar, and leaves the sidecar."""
    cache = EngineCache(tmp_path / "cache")
    real = cache.obtain(builder_for(model), model)
    real.lease.release()
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o700)
    victim = outside / "victim.onnx"
    victim.write_bytes(b"root's file")
    target = {"relative": "../outside/victim.onnx", "absolute": str(victim), "another-entry": real.entry.artifact.name}[named]
    planted = cache.directory / "planted-onnxruntime-0123456789abcdef.json"
    planted.write_text(json.dumps({"fingerprint": {"backend": "onnxruntime"}, "artifact": target, "artifact_size": 11}))
    three_days_ago = time.time() - 3 * 86400
    os.utime(planted, (three_days_ago, three_days_ago))
    done = subprocess.run(
        [sys.executable, "-m", "daemon", "engine", "prune", "--cache-dir", str(cache.directory), "--older-than-days", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done
    assert victim.exists(), f"prune removed {victim}: {done.stdout}"
    assert real.entry.artifact.exists(), f"prune removed another entry's artifact: {done.stdout}"
    assert planted.exists(), "the planted sidecar is ignored, not deleted"
    assert f"{planted.name} names artifact {target!r}" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert "victim" not in done.stdout


# -- finding 4: an engine built by root, started as the service user ----------------------------------------


def service_user() -> tuple[int, int]:
    if os.geteuid() != 0:
        pytest.skip("needs root to run a process as the unprivileged user 'nobody'")
    try:
        uid = pwd.getpwnam("nobody").pw_uid
        gid = grp.getgrnam("nogroup").gr_gid if _has_group("nogroup") else pwd.getpwnam("nobody").pw_gid
    except KeyError:
        pytest.skip("no user 'nobody' on this machine")
    return uid, gid


def _has_group(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def _drop_to(uid: int, gid: int):
    def drop() -> None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)

    return drop


def service_user_python(uid: int, gid: int) -> tuple[list[str], dict[str, str]]:
    """An interpreter ``nobody`` can run with this checkout and its venv's packages: this one, or else (when
    it lives under a private home, e.g. pyenv in /root) the system interpreter of the same version."""
    site = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), *site])}
    why = ""
    for python in (sys.executable, f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"):
        try:
            probe = subprocess.run(
                [python, "-c", "import daemon.cli, onnxruntime, zmq, cv2"], env={**os.environ, **env},
                preexec_fn=_drop_to(uid, gid), capture_output=True, text=True, cwd="/", timeout=60,
            )
        except OSError as exc:  # not executable by that user (a venv whose interpreter is under /root)
            why += f"{python}: {exc.strerror}; "
            continue
        if probe.returncode == 0:
            return [python], env
        why += f"{python}: {probe.stderr.strip()[-200:]}; "
    pytest.skip(f"no Python interpreter that the user 'nobody' may run with this venv ({why})")


@pytest.fixture
def shared_dir():
    """A directory every user can reach (pytest's tmp_path is under a 0700 directory of root)."""
    path = Path(tempfile.mkdtemp(prefix="trtstream-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


class AsServiceUser:
    def __init__(self, shared: Path):
        self.uid, self.gid = service_user()
        self.python, self.env = service_user_python(self.uid, self.gid)
        self.home = shared / "home"
        self.home.mkdir()
        os.chown(self.home, self.uid, self.gid)

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        env = {**os.environ, **self.env, "HOME": str(self.home), "TMPDIR": str(self.home), "RUNTIME_DIRECTORY": str(self.home / "run"),
               "PYTHONUNBUFFERED": "1"}
        return subprocess.run([*self.python, "-m", "daemon", *args], cwd=REPO, env=env, preexec_fn=_drop_to(self.uid, self.gid),
                              capture_output=True, text=True, timeout=timeout)


def service_config(shared: Path, cache_dir: Path, policy: str, port: int) -> Path:
    path = shared / "daemon.toml"
    path.write_text(detector_config(
        '[[sources]]\nid = "cam"\nuri = "synthetic:320x240@25"\nmax_frames = 5\n', port,
        engine=f'max_batch = 4\nmax_wait_ms = 5\nbackend = "onnxruntime"\non_missing_engine = "{policy}"\ncache_dir = "{cache_dir}"',
        wait_for_subscribers="0",
    ))
    path.chmod(0o644)
    return path


def built_by_root(shared_dir, on_missing_engine: str, port: int):
    """``trtstream engine build`` as root (this test process) into ``shared_dir``/cache: the service user,
    the config (with ``on_missing_engine``) and the artifact built."""
    as_user = AsServiceUser(shared_dir)  # first: it skips where there is no service user to drop to
    cache_dir = shared_dir / "cache"
    config = service_config(shared_dir, cache_dir, on_missing_engine, port)
    built = subprocess.run([sys.executable, "-m", "daemon", "engine", "build", str(config)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    return as_user, config, next(cache_dir.glob("*.onnx"))


def test_an_engine_root_built_is_a_cache_hit_for_the_service_user(shared_dir, free_port):
    """``sudo trtstream engine build`` (an image build), then the daemon as the unprivileged service user:
    artifact and sidecar have the same mode, readable by that user, and its start is a cache hit."""
    as_user, config, artifact = built_by_root(shared_dir, "fail", free_port)
    sidecar = artifact.with_suffix(".json")
    assert oct(artifact.stat().st_mode & 0o777) == oct(sidecar.stat().st_mode & 0o777) == "0o644"
    served = as_user.run("run", str(config))
    assert served.returncode == 0, served.stderr[-3000:]
    assert "engine cache hit" in served.stderr and "Traceback" not in served.stderr, served.stderr[-3000:]


def test_an_entry_the_service_user_cannot_read_is_a_miss_then_a_build_never_a_crash(shared_dir, free_port):
    """A root-built entry the service user cannot read (an artifact left 0600, as before this fix): the
    daemon logs a miss naming the file, builds outside the cache it cannot write and serves; ``engine
    build`` as that user says in one line that the cache is not writable and exits 1."""
    as_user, config, artifact = built_by_root(shared_dir, "wait", free_port)
    artifact.chmod(0o600)
    served = as_user.run("run", str(config))
    assert served.returncode == 0 and "Traceback" not in served.stderr, served.stderr[-3000:]
    assert f"cannot read {artifact.name}: Permission denied" in served.stderr, served.stderr[-3000:]
    assert "building into a temporary directory" in served.stderr
    assert list(as_user.home.glob("trtstream-engine-*")) == [], "the scratch directory is removed"
    refused = as_user.run("engine", "build", str(config))
    assert refused.returncode == 1, refused
    line = one_error_line(refused.stderr)
    assert f"cannot write the engine cache: {artifact.parent}" in line and "permission denied for user nobody" in line, line


# -- finding 10: a full disk -------------------------------------------------------------------------------


def test_engine_build_on_a_full_disk_says_no_space_left_and_leaves_nothing(tmp_path, model):
    """ONNX Runtime reports a full cache filesystem as INVALID_PROTOBUF ('Protobuf serialization failed'):
    that is a full disk, said as such, not a broken model; nothing half-written stays in the cache."""
    with tmpfs(tmp_path / "full", "4m") as full:
        cache_dir = full / "cache"
        done = engine_build(write_config(tmp_path, model), cache_dir)
        _, stderr = done.communicate(timeout=120)
        assert done.returncode == 1, stderr
        line = one_error_line(stderr)
        assert line.endswith(f"cannot write the engine cache: no space left on {cache_dir}"), line
        assert [name for name in cache_files(cache_dir) if not name.startswith("locks/")] == []


def test_a_full_cache_disk_takes_the_no_space_path_and_serves(tmp_path, model, monkeypatch, caplog):
    """The daemon's build (policies 'wait' and 'fallback') on a full cache: the no-space path, a build into
    a scratch directory, which is gone once the engine is loaded; the engine serves."""
    scratch_root = tmp_path / "tmp"
    scratch_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch_root))
    with tmpfs(tmp_path / "full", "4m") as full:
        cache = EngineCache(full / "cache")
        with caplog.at_level("WARNING", logger="trtstream.engine.cache"):
            obtained = cache.obtain(builder_for(model), model)
        assert obtained.outcome == "built-uncached"
        assert f"no space left on {cache.directory}" in caplog.text, caplog.text
        assert list(scratch_root.glob("trtstream-*")) == [], "the scratch directory is removed once the engine is loaded"
        assert obtained.backend.info.inputs[0].shape[1:] == (3, 416, 416)
        obtained.backend.close()
        from daemon.engine.cache import CacheUnwritable

        with pytest.raises(CacheUnwritable, match=f"no space left on {cache.directory}"):
            cache.obtain(builder_for(model), model, uncached=False)


# -- finding 11: a read-only cache -------------------------------------------------------------------------


def test_engine_build_on_a_read_only_cache_exits_non_zero(tmp_path, model):
    with tmpfs(tmp_path / "ro", "1m", readonly=True) as cache_dir:
        done = engine_build(write_config(tmp_path, model), cache_dir)
        stdout, stderr = done.communicate(timeout=120)
    assert done.returncode == 1, (stdout, stderr)
    line = one_error_line(stderr)
    assert line.endswith(f"cannot write the engine cache: {cache_dir} is on a read-only filesystem"), line
    assert "built" not in stdout


def test_the_daemon_on_a_read_only_cache_serves_and_leaves_no_scratch_directory(tmp_path, start_daemon, free_port):
    """Every start on a read-only cache built an engine into /tmp and left it there (35 MB here, a TensorRT
    plan is larger): the daemon serves from an uncached build and removes its scratch directory."""
    from daemon.client import ResultSubscriber

    from .conftest import collect, all_ended

    scratch_root = tmp_path / "tmp"
    scratch_root.mkdir()
    with tmpfs(tmp_path / "ro", "1m", readonly=True) as cache_dir:
        config = detector_config(
            '[[sources]]\nid = "cam"\nuri = "synthetic:320x240@25"\nmax_frames = 5\n', free_port,
            engine=f'max_batch = 4\nmax_wait_ms = 5\nbackend = "onnxruntime"\non_missing_engine = "wait"\ncache_dir = "{cache_dir}"',
        )
        with ResultSubscriber(f"tcp://127.0.0.1:{free_port}") as subscriber:
            daemon = start_daemon(config, env={"TMPDIR": str(scratch_root)})
            messages = collect(subscriber, all_ended, timeout=120, daemon=daemon)
            assert daemon.wait(30) == 0, daemon.stderr
    results = [m for m in messages if m.type == "result"]
    assert len(results) == 5 and all(m.header["model"]["artifact"] for m in results)
    assert list(scratch_root.glob("trtstream-*")) == [], f"left behind: {list(scratch_root.iterdir())}"
    assert f"cannot write the engine cache: {cache_dir} is on a read-only filesystem; building into a temporary directory" in daemon.stderr


# -- finding 14: a symlinked lock file ---------------------------------------------------------------------


def test_a_symlinked_lock_file_is_not_followed(tmp_path, model):
    cache = EngineCache(tmp_path / "cache")
    builder = builder_for(model)
    name = cache.entry_name(builder, model, cache.full_fingerprint(builder, model))
    (cache.directory / "locks").mkdir(parents=True)
    lock = cache.directory / "locks" / f"{name}.lock"
    target = tmp_path / "elsewhere" / "created-through-the-link"
    target.parent.mkdir()
    lock.symlink_to(target)
    done = engine_build(write_config(tmp_path, model), cache.directory)
    _, stderr = done.communicate(timeout=120)
    assert not target.exists(), "the lock's symlink was followed (its target created)"
    assert done.returncode == 1, stderr
    line = one_error_line(stderr)
    assert line.endswith(f"cannot write the engine cache: {lock} is a symbolic link (not followed)"), line
    # The daemon serves anyway (uncached, with the same warning); the link is left for the operator to look at.
    obtained = cache.obtain(builder_for(model), model)
    assert obtained.outcome == "built-uncached" and lock.is_symlink() and not target.exists()
    obtained.backend.close()


# -- from reading the code: the TensorRT timing cache is per GPU --------------------------------------------


def test_each_gpu_has_its_own_timing_cache(tmp_path):
    """TensorRT builds on an A100 and on an H100 (the CPU doubles) through the cache: two timing caches,
    the H100 build does not start from the A100's, and a later A100 build starts from its own."""
    from .test_tensorrt_backend import Fakes

    cache = EngineCache(tmp_path / "cache")
    a100, h100 = Fakes("11.1", tmp_path), Fakes("11.1", tmp_path)
    a100.cuda.gpu_name, a100.cuda.compute_capability = "NVIDIA A100-SXM4-80GB", "8.0"
    assert cache.timing_cache_path(a100.builder()) != cache.timing_cache_path(h100.builder())
    assert cache.timing_cache_path(h100.builder()) == cache.timing_cache_path(Fakes("11.1", tmp_path).builder())
    for fakes in (a100, h100):
        obtained = cache.obtain(fakes.builder(), fakes.model_path)
        assert obtained.outcome == "built"
        obtained.backend.close()
        assert fakes.args("IBuilderConfig.create_timing_cache")[0] == (b"",), "started from another GPU's timing cache"
    assert len(list((cache.directory / "timing").iterdir())) == 2
    again = Fakes("11.1", tmp_path)
    again.cuda.gpu_name, again.cuda.compute_capability = "NVIDIA A100-SXM4-80GB", "8.0"
    cache.obtain(again.builder(tensorrt={"workspace_mb": 2048}), again.model_path).backend.close()  # another entry, same GPU
    assert b"entry:" in again.args("IBuilderConfig.create_timing_cache")[0][0], "the A100's own timing cache is reused"


def test_a_builder_with_a_timing_cache_must_name_its_device(tmp_path):
    """A timing-cache builder whose fingerprint has no ``device``: no timing cache rather than one shared."""
    from .test_tensorrt_backend import Fakes

    class NoDevice:
        backend, uses_timing_cache = "tensorrt", True

        def fingerprint(self):
            return {"gpu": "x"}

    assert EngineCache(tmp_path / "cache").timing_cache_path(NoDevice()) is None
    assert Fakes("11.1", tmp_path).builder().fingerprint()["device"]["gpu"] == "NVIDIA H100 80GB HBM3"



def test_prune_by_a_user_who_cannot_write_the_cache_says_so_in_one_line(shared_dir):
    """``engine prune`` as the service user on a cache root owns: one line and exit 1, every file kept."""
    as_user = AsServiceUser(shared_dir)
    model = shared_dir / "models" / "detector.onnx"
    model.parent.mkdir()
    shutil.copy(asset("models/yolov3_tiny_416.onnx"), model)
    cache = EngineCache(shared_dir / "cache")
    obtained = cache.obtain(builder_for(model), model)
    obtained.lease.release()
    obtained.backend.close()
    three_days_ago = time.time() - 3 * 86400
    os.utime(obtained.entry.sidecar, (three_days_ago, three_days_ago))
    before = cache_files(cache.directory)
    done = as_user.run("engine", "prune", "--cache-dir", str(cache.directory), "--older-than-days", "1")
    assert done.returncode == 1, done
    line = one_error_line(done.stderr)
    assert line.endswith(f"cannot prune the engine cache: {cache.directory}: permission denied for user nobody"), line
    assert cache_files(cache.directory) == before
