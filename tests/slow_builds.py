"""Builds that take a while, or fail in a known way, for the tests of builds in a child process.

:func:`slow_to_optimise_model` writes a real ONNX model whose ONNX Runtime optimisation takes many
seconds of real work: a chain of ``matmuls`` products of constant 3000 x 3000 matrices, which the
optimiser's constant folding computes (about 0.3 s each on the 2-core development machine, 36 MB of
memory each). The model itself is a small classifier (``images`` [1, 3, 32, 32] -> ``output`` [1, 3]).

The builders below are made in the child by their module-level factories (``child_recipe``), as the
daemon's own builders are; they stand in for nothing: each is a builder that does exactly what its name
says, to see how the parent reports it."""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import numpy as np

SIZE = 3000


def slow_to_optimise_model(path: Path, matmuls: int = 60) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    a = numpy_helper.from_array(rng.random((SIZE, SIZE), dtype=np.float32) / SIZE, "a")
    b = numpy_helper.from_array(rng.random((SIZE, SIZE), dtype=np.float32) / SIZE, "b")
    starts = numpy_helper.from_array(np.array([0, 0], np.int64), "starts")
    ends = numpy_helper.from_array(np.array([1, 3], np.int64), "ends")
    axes = numpy_helper.from_array(np.array([2, 3], np.int64), "axes")
    nodes, previous = [], "a"
    for i in range(matmuls):
        nodes.append(helper.make_node("MatMul", [previous, "b"], [f"c{i}"]))
        previous = f"c{i}"
    nodes += [
        helper.make_node("Slice", [previous, "starts", "ends"], ["bias"]),
        helper.make_node("ReduceMean", ["images", "axes"], ["pooled"], keepdims=0),
        helper.make_node("Add", ["pooled", "bias"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "slow_to_optimise", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3])], [a, b, starts, ends, axes],
    )  # fmt: skip
    # IR version 8 (what opset 18 needs): the onnx of a newer Python writes its own latest (14), which
    # the ONNX Runtime built for Python 3.10 refuses ("max supported IR version: 11").
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8), str(path))
    return path


class FailingBuilder:
    """Fails its build the way ``how`` names: ``enospc`` (an OSError with ENOSPC), ``backend`` (a
    BackendError), ``crash`` (a plain exception), ``killed`` (the process SIGKILLs itself)."""

    backend = "failing"
    artifact_suffix = ".bin"
    uses_timing_cache = False

    def __init__(self, how: str):
        self.how = how

    def fingerprint(self) -> dict:
        return {"how": self.how}

    def child_recipe(self):
        return failing_builder, (self.how,)

    def build(self, model_path, output_path, timing_cache_path, progress) -> None:
        from daemon.errors import BackendError

        progress(0.5, f"about to fail: {self.how}")
        if self.how == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device", str(output_path))
        if self.how == "backend":
            raise BackendError(f"{model_path}: cannot build (as asked)")
        if self.how == "crash":
            raise ZeroDivisionError("a bug in the builder")
        if self.how == "killed":
            os.kill(os.getpid(), signal.SIGKILL)
        Path(output_path).write_bytes(b"built in pid %d" % os.getpid())

    def load(self, artifact_path):
        raise NotImplementedError


def failing_builder(how: str) -> FailingBuilder:
    return FailingBuilder(how)
