"""cuda-bindings newer than the driver is said in one line at start (issue 9, item 4).

A CUDA driver cannot exist on the CPU machine, so the end-to-end test uses two test doubles, named as
such: a stand-in ``libcuda.so.1`` compiled here whose only function, ``cuDriverGetVersion``, reports
CUDA 12.6 (JetPack 6's driver), and a ``cuda_bindings-13.0.0.dist-info`` with nothing but its metadata
(what ``pip install cuda-python`` gives today). They prove how trtstream reads the two versions and
what it says; that a real cuda-bindings 13 fails on a real CUDA 12 driver is NVIDIA's documented rule,
not something run here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.cuda import bindings_driver_mismatch, driver_cuda_version

from .conftest import detector_config, missing


@pytest.mark.parametrize(
    ("bindings", "driver", "expected"),
    [
        ("13.0.1", (12, 6), "gpu-cu12"),     # pip's default today on JetPack 6: refused, names the fix
        ("13.2.0", (12, 9), "gpu-cu12"),
        ("12.9.0", (12, 6), None),           # minor versions are forward compatible within a major
        ("12.6.2", (13, 0), None),           # a newer driver runs older bindings
        ("13.0.0", (13, 1), None),
        ("13.0.0", None, None),              # no driver (CPU machine): nothing to say here
        (None, (12, 6), None),               # no bindings installed
    ],
)
def test_bindings_newer_than_the_driver_is_one_line_naming_the_extra(bindings, driver, expected) -> None:
    line = bindings_driver_mismatch(bindings, driver)
    if expected is None:
        assert line is None
    else:
        assert line is not None and "\n" not in line
        assert f"needs a CUDA {bindings.split('.')[0]} driver" in line and f"CUDA {driver[0]}.{driver[1]}" in line
        assert f"trtstream[{expected}]" in line


def test_no_driver_on_this_machine_reads_as_none() -> None:
    if Path("/dev/nvidiactl").exists():
        pytest.skip("this machine has an NVIDIA driver")
    assert driver_cuda_version() is None


FAKE_LIBCUDA = r"""
/* TEST DOUBLE of libcuda.so.1: reports a CUDA 12.6 driver (JetPack 6) and nothing else. */
int cuDriverGetVersion(int *version) { *version = 12060; return 0; }
"""


def test_a_tensorrt_daemon_on_a_cuda12_driver_with_bindings_13_says_so_in_one_line(tmp_path: Path, free_port: int) -> None:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        missing("no C compiler to build the stand-in libcuda (.ci/run installs gcc)")
    lib = tmp_path / "lib"
    lib.mkdir()
    (tmp_path / "fake_libcuda.c").write_text(FAKE_LIBCUDA)
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib / "libcuda.so.1"), str(tmp_path / "fake_libcuda.c")], check=True)
    site = tmp_path / "site"
    info = site / "cuda_bindings-13.0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cuda-bindings\nVersion: 13.0.0\n")
    config = tmp_path / "gpu.toml"
    config.write_text(detector_config('[[sources]]\nid = "cam"\nuri = "synthetic:320x240@10"\nmax_frames = 2\n',
                                      free_port, engine='backend = "tensorrt"\nmax_batch = 2'))
    env = {**os.environ, "LD_LIBRARY_PATH": str(lib), "PYTHONPATH": str(site)}
    result = subprocess.run([sys.executable, "-m", "daemon", "run", str(config)], capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result.stderr
    assert "cuda-bindings 13.0.0 needs a CUDA 13 driver" in errors[0] and "CUDA 12.6" in errors[0]
    assert "trtstream[gpu-cu12]" in errors[0]
