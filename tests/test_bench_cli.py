"""``trtstream bench``: the CPU benchmark runs the real daemon and ONNX Runtime side by side and prints its
ratio; the GPU benchmark refuses a machine without a GPU in one line; a bad config is one line, exit 2."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def bench(*args: str, timeout: float = 240, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "daemon", "bench", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=None if env is None else {**os.environ, **env})


def test_bench_cpu_measures_engine_only_and_the_pipeline_side_by_side(tmp_path):
    """Beside a running daemon: a listener holds the default control socket (as the daemon under test in
    another CI job once did), and the benchmark's own daemon takes a socket of its own."""
    run = tmp_path / "run"
    run.mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as running:
        running.bind(str(run / "control.ipc"))
        running.listen()
        done = bench("cpu", "--rounds", "1", "--frames", "24", "--batch", "4", env={"RUNTIME_DIRECTORY": str(run)})
    assert done.returncode == 0, done.stderr[-2000:]
    engine = float(re.search(r"engine-only \(ready batches\)\s+([\d.]+)", done.stdout).group(1))
    pipeline = float(re.search(r"pipeline \(decode\.\.publish\)\s+([\d.]+)", done.stdout).group(1))
    ratio = float(re.search(r"ratio pipeline/engine-only\s+([\d.]+)", done.stdout).group(1))
    assert engine > 0 and pipeline > 0
    assert ratio == pytest.approx(pipeline / engine, rel=0.01)  # the fps are printed to 0.1
    # One round shows no spread: the warning is one line in the printed output and one on stderr.
    assert [line for line in done.stdout.splitlines() if line.startswith("warning: ")] == [
        line.removeprefix("trtstream bench cpu: ") for line in done.stderr.splitlines() if line.startswith("trtstream bench cpu: warning: ")
    ]
    assert "warning: one round shows no spread" in done.stdout


def test_bench_decode_measures_converting_and_going_past_frames_side_by_side():
    """The decode ceiling on the real sample clip (two captures): frames/s and CPU per frame for read()
    and for grab() in one run, and their CPU ratio as printed."""
    done = bench("decode", "--clip", str(REPO / "assets" / "media" / "bikes.mp4"), "--captures", "1,2", "--seconds", "0.5")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split() for line in done.stdout.splitlines() if re.match(r"\s+\d+\s", line)]
    assert [row[0] for row in rows] == ["1", "2"], done.stdout
    for _, read_fps, read_cpu, grab_fps, grab_cpu, ratio in rows:
        assert float(read_fps) > 0 and float(grab_fps) > 0
        read, grab = float(read_cpu), float(grab_cpu)  # printed to 0.001 ms: the ratio's bound follows from that rounding
        assert float(ratio) == pytest.approx(grab / read, abs=0.0005 * (1 + (1 + grab / read) / read))


def test_bench_decode_names_a_missing_clip_in_one_line(tmp_path):
    done = bench("decode", "--clip", str(tmp_path / "none.mp4"), timeout=60)
    assert done.returncode == 2 and done.stdout.strip().count("\n") == 0 and "none.mp4: no such file" in done.stdout


@pytest.mark.parametrize("target", ["cpu", "gpu", "decode"])
def test_bench_help_names_the_subcommand(target):
    done = bench(target, "--help", timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: trtstream bench {target} ")


def test_bench_help_without_a_target_names_both_benchmarks():
    done = bench("--help", timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: trtstream bench ")
    text = " ".join(done.stdout.split())  # argparse wraps the description
    assert "trtstream bench cpu --help" in text and "trtstream bench gpu --help" in text and "trtstream bench decode --help" in text


def test_bench_cpu_names_a_missing_config_in_one_line():
    done = bench("cpu", "--config", "no/such.toml")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "no/such.toml" in done.stderr and "Traceback" not in done.stderr


def test_bench_cpu_names_a_taken_metrics_port_in_one_line(tmp_path):
    """The daemon under the benchmark cannot start (its config's metrics port is taken): one line naming
    it, exit non-zero, no traceback from the daemon's thread."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "taken.toml"
        text = (REPO / "configs" / "default.toml").read_text().replace('"../assets/', f'"{REPO}/assets/')
        config.write_text(text + f"\n[metrics]\nenabled = true\nport = {port}\n")
        done = bench("cpu", "--config", str(config), "--rounds", "1", "--frames", "8", "--batch", "4")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "bench: the daemon did not start" in done.stderr and str(port) in done.stderr, done.stderr[-2000:]


def test_bench_gpu_without_a_gpu_says_so_in_one_line():
    from daemon.backends.torch import torch_usable

    if torch_usable():
        pytest.skip("this machine has a GPU with PyTorch: the refusal cannot be observed here")
    done = bench("gpu")
    assert done.returncode == 2
    assert "needs an NVIDIA GPU" in done.stderr and "Traceback" not in done.stderr
