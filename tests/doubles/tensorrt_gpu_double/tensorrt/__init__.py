"""NOT TensorRT: a TEST DOUBLE importable as ``tensorrt``, for GPU tests of a daemon subprocess.

Put ``tests/doubles/tensorrt_gpu_double`` first on the subprocess's PYTHONPATH
(``tests.doubles.gpu_tensorrt.shim_environment()``) and ``import tensorrt`` gives one
:class:`tests.doubles.gpu_tensorrt.GpuTensorRT` module: the API surface of the release named by
``TRTSTREAM_TRT_DOUBLE_VERSION`` ("11.1", the default, or "10.16"), with TensorRT's builder and kernels stood
in for and the model run in torch on the GPU (see that module for what is real and what is not). Importing it
prints one WARNING line to stderr, so no log can pass it off as TensorRT.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parents[4]  # tensorrt/ < tensorrt_gpu_double/ < doubles/ < tests/ < the repository
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))  # the double lives in the repository's tests package

from tests.doubles.gpu_tensorrt import VERSION_ENV, WARNING_LINE, GpuTensorRT  # noqa: E402

_double = GpuTensorRT(os.environ.get(VERSION_ENV) or "11.1")
__version__ = _double.module.__version__

print(f"WARNING {WARNING_LINE} (release {__version__} mimicked)", file=sys.stderr, flush=True)


def __getattr__(name: str):
    """Every other name resolves through the double (only the names of the mimicked release exist)."""
    return getattr(_double.module, name)
