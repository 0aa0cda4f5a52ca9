"""Every TensorRT name ``daemon/backends/tensorrt.py`` uses exists in the TensorRT release its code path runs on.

TensorRT cannot be installed here, so instead of importing it this parses the adapter with ``ast`` and checks
each use against the API surfaces in ``tests/data/trt-api`` (11.1 and 10.16):

* every attribute chain rooted at the ``trt`` module (``trt.Runtime``, ``trt.BuilderFlag.FP16``,
  ``trt.ILogger.Severity.ERROR``; ``self._trt`` counts as ``trt``);
* every attribute read or method called on a TensorRT object whose type is known: from an annotation
  (``network: trt.INetworkDefinition``), a constructor (``trt.Builder(logger)``) or a TensorRT call whose
  return type is in :data:`RETURNS` (``builder.create_network(...)`` is an ``INetworkDefinition``);
* the version a use runs on, from the branch it sits in: ``if self._v11:`` is 11 only and its ``else`` 10 only;
  ``not``/``and``/``or`` and comparisons of ``trt_major(trt)`` (or ``major``) with a constant are understood.
  Outside any branch a name must exist in both releases.

Dynamic access (``getattr(trt.X, name)``) cannot be checked, so it is reported too.
"""

from __future__ import annotations

import ast
import operator
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .doubles.trt_api import IN_REPO, SHARED, VERSIONS, load_surface

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "daemon" / "backends" / "tensorrt.py"

SURFACES = {load_surface(v).major: load_surface(v) for v in VERSIONS}  # {11: 11.1, 10: 10.16}
BOTH = frozenset(SURFACES)

# What TensorRT calls return, so the methods called on the results can be checked too.
RETURNS = {
    ("Builder", "create_network"): "INetworkDefinition",
    ("Builder", "create_builder_config"): "IBuilderConfig",
    ("Builder", "create_optimization_profile"): "IOptimizationProfile",
    ("Builder", "build_serialized_network"): "IHostMemory",
    ("INetworkDefinition", "get_input"): "ITensor",
    ("INetworkDefinition", "get_output"): "ITensor",
    ("INetworkDefinition", "get_layer"): "ILayer",
    ("ILayer", "get_output"): "ITensor",
    ("OnnxParser", "get_error"): "ParserError",
    ("IBuilderConfig", "create_timing_cache"): "ITimingCache",
    ("IBuilderConfig", "get_timing_cache"): "ITimingCache",
    ("ITimingCache", "serialize"): "IHostMemory",
    ("Runtime", "deserialize_cuda_engine"): "ICudaEngine",
    ("ICudaEngine", "create_execution_context"): "IExecutionContext",
}

# The calls the adapter cannot do without: each must be found (attributed to its type) and exist in both releases.
REQUIRED = [
    ("Builder", "create_network"),
    ("Builder", "create_builder_config"),
    ("Builder", "create_optimization_profile"),
    ("Builder", "build_serialized_network"),
    ("OnnxParser", "parse"),
    ("OnnxParser", "num_errors"),
    ("OnnxParser", "get_error"),
    ("INetworkDefinition", "get_input"),
    ("INetworkDefinition", "num_inputs"),
    ("ITensor", "shape"),
    ("IOptimizationProfile", "set_shape"),
    ("IBuilderConfig", "set_memory_pool_limit"),
    ("IBuilderConfig", "set_flag"),
    ("IBuilderConfig", "add_optimization_profile"),
    ("IBuilderConfig", "builder_optimization_level"),
    ("IBuilderConfig", "hardware_compatibility_level"),
    ("IBuilderConfig", "create_timing_cache"),
    ("IBuilderConfig", "set_timing_cache"),
    ("IBuilderConfig", "get_timing_cache"),
    ("ITimingCache", "serialize"),
    ("Runtime", "deserialize_cuda_engine"),
    ("Runtime", "engine_host_code_allowed"),
    ("ICudaEngine", "num_io_tensors"),
    ("ICudaEngine", "get_tensor_name"),
    ("ICudaEngine", "get_tensor_mode"),
    ("ICudaEngine", "get_tensor_shape"),
    ("ICudaEngine", "get_tensor_dtype"),
    ("ICudaEngine", "get_tensor_profile_shape"),
    ("ICudaEngine", "create_execution_context"),
    ("IExecutionContext", "set_input_shape"),
    ("IExecutionContext", "set_tensor_address"),
    ("IExecutionContext", "execute_async_v3"),
    ("IExecutionContext", "get_tensor_shape"),
    ("ILogger", "Severity"),
]

_COMPARE = {
    ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Eq: operator.eq, ast.NotEq: operator.ne
}  # fmt: skip
MODULE = ("module", "")


def _is_type(name: str) -> bool:
    return any(s.has_type(name) for s in SURFACES.values())


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    uses: dict[tuple[str, str], frozenset[int]] = field(default_factory=dict)  # (type or "tensorrt", name) -> majors

    def use(self, owner: str, name: str, versions: frozenset[int]) -> None:
        self.uses[(owner, name)] = self.uses.get((owner, name), frozenset()) | versions


class Checker(ast.NodeVisitor):
    """Walks a module, tracking the TensorRT version context and the TensorRT types of names."""

    def __init__(self, report: Report, check: bool = True):
        self.report = report
        self.check = check
        self.versions: frozenset[int] = BOTH
        self.locals: dict[str, Any] = {}
        self.self_attrs: dict[str, Any] = {}

    # -- types -------------------------------------------------------------------------------------------------

    def type_of(self, node: ast.AST) -> Any:
        """MODULE, ("type", T) for a TensorRT type object, ("obj", T) for an instance, or None."""
        if isinstance(node, ast.Name):
            return MODULE if node.id == "trt" else self.locals.get(node.id)
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self":
                return MODULE if node.attr == "_trt" else self.self_attrs.get(node.attr)
            base = self.type_of(node.value)
            if base == MODULE and _is_type(node.attr):
                return ("type", node.attr)
            if base and base[0] == "type" and _is_type(f"{base[1]}.{node.attr}"):
                return ("type", f"{base[1]}.{node.attr}")
            return None
        if isinstance(node, ast.Call):
            func = self.type_of(node.func)
            if func and func[0] == "type" and not any(s.is_enum(func[1]) for s in SURFACES.values()):
                return ("obj", func[1])  # a constructor
            if isinstance(node.func, ast.Attribute):
                owner = self.type_of(node.func.value)
                if owner and owner[0] == "obj" and (owner[1], node.func.attr) in RETURNS:
                    return ("obj", RETURNS[(owner[1], node.func.attr)])
        return None

    def annotation_type(self, node: ast.AST | None) -> Any:
        if node is None:
            return None
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return self.annotation_type(ast.parse(node.value, mode="eval").body)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):  # trt.X | None
            return self.annotation_type(node.left) or self.annotation_type(node.right)
        if isinstance(node, ast.Subscript) and getattr(node.value, "id", getattr(node.value, "attr", "")) == "Optional":
            return self.annotation_type(node.slice)
        found = self.type_of(node)
        return ("obj", found[1]) if found and found[0] == "type" else None

    # -- version branches ----------------------------------------------------------------------------------

    def narrow(self, test: ast.AST) -> tuple[frozenset[int], frozenset[int]]:
        """The versions on which ``test`` can be true, and those on which it can be false."""
        if getattr(test, "id", None) in ("v11", "_v11") or getattr(test, "attr", None) in ("v11", "_v11"):
            return frozenset({11}), frozenset({10})
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            true, false = self.narrow(test.operand)
            return false, true
        if isinstance(test, ast.BoolOp):
            parts = [self.narrow(v) for v in test.values]
            if isinstance(test.op, ast.And):
                return frozenset.intersection(*(t for t, _ in parts)), frozenset.union(*(f for _, f in parts))
            return frozenset.union(*(t for t, _ in parts)), frozenset.intersection(*(f for _, f in parts))
        if (
            isinstance(test, ast.Compare)
            and len(test.ops) == 1
            and type(test.ops[0]) in _COMPARE
            and self._is_major(test.left)
            and isinstance(test.comparators[0], ast.Constant)
        ):
            op, value = _COMPARE[type(test.ops[0])], test.comparators[0].value
            true = frozenset(m for m in BOTH if op(m, value))
            return true, BOTH - true
        return BOTH, BOTH

    @staticmethod
    def _is_major(node: ast.AST) -> bool:
        if isinstance(node, ast.Call):
            return getattr(node.func, "id", getattr(node.func, "attr", None)) == "trt_major"
        return getattr(node, "id", getattr(node, "attr", None)) in ("major", "_major")

    def visit_If(self, node: ast.If) -> None:
        self.visit(node.test)
        true, false = self.narrow(node.test)
        outer = self.versions
        self.versions = outer & true
        for statement in node.body:
            self.visit(statement)
        self.versions = outer & false
        for statement in node.orelse:
            self.visit(statement)
        self.versions = outer

    def visit_IfExp(self, node: ast.IfExp) -> None:
        self.visit(node.test)
        true, false = self.narrow(node.test)
        outer = self.versions
        self.versions = outer & true
        self.visit(node.body)
        self.versions = outer & false
        self.visit(node.orelse)
        self.versions = outer

    # -- scopes ------------------------------------------------------------------------------------------------

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        outer_attrs, outer_check = self.self_attrs, self.check
        self.self_attrs = {}
        self.check = False  # first pass: learn the types of self.<attr> from every method
        for statement in node.body:
            self.visit(statement)
        self.check = outer_check
        for statement in node.body:
            self.visit(statement)
        self.self_attrs = outer_attrs

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        outer = self.locals
        self.locals = {}
        arguments = node.args
        for arg in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]:
            kind = MODULE if arg.arg == "trt" else self.annotation_type(arg.annotation)
            if kind:
                self.locals[arg.arg] = kind
        for statement in node.body:
            self.visit(statement)
        self.locals = outer

    visit_AsyncFunctionDef = visit_FunctionDef

    def _bind(self, target: ast.AST, kind: Any) -> None:
        if isinstance(target, ast.Name):
            if kind:
                self.locals[target.id] = kind
            else:
                self.locals.pop(target.id, None)
        elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
            if kind:
                self.self_attrs[target.attr] = kind

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        kind = self.type_of(node.value)
        for target in node.targets:
            self.visit(target)
            self._bind(target, kind)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
        self.visit(node.target)
        self._bind(node.target, self.annotation_type(node.annotation) or (self.type_of(node.value) if node.value else None))

    # -- the checks ----------------------------------------------------------------------------------------

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self.visit(node.value)
        base = self.type_of(node.value)
        if base is None or not self.check or not self.versions:
            return
        if base == MODULE:
            owner, label = "tensorrt", f"trt.{node.attr}"
            exists = {m: node.attr in SURFACES[m].module_names for m in self.versions}
        else:
            owner, label = base[1], f"{base[1]}.{node.attr}"
            exists = {m: node.attr in SURFACES[m].members(owner) for m in self.versions}
        self.report.use(owner, node.attr, self.versions)
        missing = sorted(SURFACES[m].full_version for m, ok in exists.items() if not ok)
        if missing:
            runs_on = ", ".join(SURFACES[m].full_version for m in sorted(self.versions))
            self.report.problems.append(
                f"line {node.lineno}: {label} does not exist in TensorRT {', '.join(missing)} "
                f"(this code runs on {runs_on}; put it under `if self._v11:` / `else:`)"
            )

    def visit_Call(self, node: ast.Call) -> None:
        self.generic_visit(node)
        if self.check and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr", "setattr") and node.args:
            if self.type_of(node.args[0]) is not None:
                self.report.problems.append(
                    f"line {node.lineno}: {node.func.id}() on a TensorRT object cannot be checked against the API surface"
                )


def check_source(source: str) -> Report:
    report = Report()
    Checker(report).visit(ast.parse(source))
    return report


@pytest.fixture(scope="module")
def adapter() -> Report:
    return check_source(SOURCE.read_text())


def test_every_tensorrt_name_exists_on_its_code_path(adapter):
    assert adapter.problems == []
    # the walk is not vacuous: it found and attributed the adapter's TensorRT uses
    assert len(adapter.uses) >= 60
    assert ("BuilderFlag", "FP16") in adapter.uses and adapter.uses[("BuilderFlag", "FP16")] == frozenset({10})


def test_the_calls_the_adapter_needs_are_found_and_exist_in_both_releases(adapter):
    for owner, member in REQUIRED:
        assert (owner, member) in adapter.uses, f"{owner}.{member} not found (or not attributed) in {SOURCE.name}"
        for surface in SURFACES.values():
            assert member in surface.members(owner), f"{owner}.{member} missing from TensorRT {surface.full_version}"


def test_removed_apis_are_not_used(adapter):
    removed = {
        ("Builder", "build_engine"),
        ("IExecutionContext", "execute_async_v2"),
        ("IExecutionContext", "set_binding_shape"),
        ("ICudaEngine", "get_binding_index"),
        ("ICudaEngine", "num_bindings"),
        ("IBuilderConfig", "max_workspace_size"),
        ("NetworkDefinitionCreationFlag", "EXPLICIT_BATCH"),
    }
    assert not removed & set(adapter.uses)


def test_the_surfaces_are_those_of_the_right_releases():
    assert {s.full_version for s in SURFACES.values()} == {"11.1.0.106", "10.16.0.72"}
    assert "FP16" in SURFACES[10].members("BuilderFlag") and "FP16" not in SURFACES[11].members("BuilderFlag")


def test_in_repo_surfaces_match_shared_ones():
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not beside this checkout")
    for path in sorted(IN_REPO.glob("api-*.json")):
        shared = SHARED / path.name
        if shared.is_file():
            assert path.read_bytes() == shared.read_bytes(), f"{path} differs from {shared}: copy it again"


# -- the checker itself: it must be able to fail -----------------------------------------------------------------


def _problems(body: str) -> list[str]:
    source = "class X:\n    def f(self, trt, logger, data):\n" + textwrap.indent(textwrap.dedent(body), " " * 8)
    return check_source(source).problems


@pytest.mark.parametrize(
    "body",
    [
        "config.set_flag(trt.BuilderFlag.FP16)",
        "if self._v11:\n    flag = trt.BuilderFlag.INT8",
        "if trt_major(trt) >= 11:\n    flag = trt.BuilderFlag.FP8",
        "if not self._v11 or data:\n    flag = trt.BuilderFlag.FP16",
        "flag = self._trt.BuilderFlag.FP16",
        "flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)",
        "cal = trt.IInt8EntropyCalibrator2",
        "builder = trt.Builder(logger)\nengine = builder.build_engine(None, None)",
        "runtime = trt.Runtime(logger)\nengine = runtime.deserialize_cuda_engine(data)\nengine.get_binding_index('x')",
        "engine: trt.ICudaEngine = data\ncontext = engine.create_execution_context()\ncontext.execute_async_v2([], 0)",
        "builder = trt.Builder(logger)\nconfig = builder.create_builder_config()\nconfig.max_workspace_size = 1",
        "level = trt.ILogger.Severity.DEBUG",
        "flag = getattr(trt.BuilderFlag, 'FP16')",
    ],
)
def test_checker_reports_a_name_missing_on_its_code_path(body):
    assert _problems(body), body


@pytest.mark.parametrize(
    "body",
    [
        "if self._v11:\n    pass\nelse:\n    flag = trt.BuilderFlag.FP16",
        "if not self._v11:\n    flag = trt.BuilderFlag.FP16",
        "if trt_major(trt) < 11:\n    flag = trt.BuilderFlag.FP16",
        "if self._v11:\n    pass\nelif data:\n    pass\nelse:\n    flag = trt.BuilderFlag.INT8",
        "if not self._v11 and data:\n    flag = trt.BuilderFlag.FP16",
        "flag = trt.BuilderFlag.FP16 if not self._v11 else None",
        "builder = trt.Builder(logger)\nplan = builder.build_serialized_network(None, None)",
        "flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)",
        "level = trt.ILogger.Severity.ERROR",
    ],
)
def test_checker_accepts_names_on_the_right_code_path(body):
    assert _problems(body) == []
