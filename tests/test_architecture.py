"""The package's shape: no import cycles, imports that go one way down the pipeline, small modules and functions.

Every ``import`` statement counts, wherever it is (module top, inside a function, under
``TYPE_CHECKING``): a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ensemble"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
#: The pipeline, bottom to top: a module may import its own layer and the layers below, never above.
LAYERS = ("base", "data", "search", "combine", "inference", "report", "pipeline", "api", "cli")
BASE = {
    "ensemble", "ensemble.errors", "ensemble.io", "ensemble.locks", "ensemble.quiet", "ensemble.durations",
    "ensemble.metrics", "ensemble.logs", "ensemble.backends",
}  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """The ``ensemble`` modules ``name`` imports (``from ensemble.x import y``: also ``ensemble.x.y`` if a module)."""
    tree = ast.parse(MODULES[name].read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in found if m in MODULES and m != name and not name.startswith(m + ".")}


GRAPH = {name: imports_of(name) for name in MODULES}


def layer(name: str) -> int:
    if name in BASE or name == "ensemble.__main__":
        return 0
    return LAYERS.index(name.split(".")[1])


def test_no_import_cycles() -> None:
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_imports_go_one_way_down_the_pipeline() -> None:
    upward = [
        f"{a} ({LAYERS[layer(a)]}) imports {b} ({LAYERS[layer(b)]})"
        for a, targets in GRAPH.items() for b in targets
        if layer(b) > layer(a) and a not in {"ensemble", "ensemble.__main__"}
    ]  # fmt: skip
    assert not upward, "\n".join(upward)


def test_every_module_belongs_to_a_layer() -> None:
    for name in MODULES:
        assert name in BASE or name == "ensemble.__main__" or name.split(".")[1] in LAYERS, name


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_and_function_sizes(name: str) -> None:
    text = MODULES[name].read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{name}: {len(text.splitlines())} lines"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]  # fmt: skip
    assert not long, f"{name}: functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"


def test_the_checks_see_a_cycle_and_an_upward_import() -> None:
    """The checks above are not vacuous: the graph they read has real edges both ways round the layers."""
    assert "ensemble.combine.voting" in GRAPH["ensemble.combine.build"]
    assert any(layer(b) < layer(a) for a, t in GRAPH.items() for b in t)


# ---------------------------------------------------------------- the manifest's one definition
def _written_manifests(folder: Path) -> list[tuple[Path, str]]:
    """Every ``manifest.json`` below ``folder`` that ``write_manifest`` wrote (its exact indented JSON)."""
    import json

    from ensemble.combine.manifest import FORMAT

    out = []
    for path in sorted(folder.rglob("manifest.json")):
        text = path.read_text()
        try:
            data = json.loads(text)
        except ValueError:
            continue
        if isinstance(data, dict) and data.get("format") == FORMAT and text == json.dumps(data, indent=2) + "\n":
            out.append((path, text))
    return out


def test_every_manifest_written_reads_back_as_written(tiny_finished_run, tmp_path_factory) -> None:
    """``Manifest.from_json(json).to_json()`` gives back, byte for byte, every manifest the suite wrote.

    The files: the tiny finished run's ``ensemble/`` and, when its final model has CNNs, ``ensemble-full/``
    (the final refit and a member the final stage added), and every other one this test session has
    written so far (in a full run the sub-packages' tests, child processes included, run before this file).
    """
    import json

    from ensemble.combine.manifest import Manifest

    result, _ = tiny_finished_run
    written = _written_manifests(tmp_path_factory.getbasetemp())
    own = {p.parent.name for p, _ in written if p.is_relative_to(result.path)}
    assert "ensemble" in own and own <= {"ensemble", "ensemble-full"}, own
    for path, text in written:
        assert json.dumps(Manifest.from_json(json.loads(text), str(path)).to_json(), indent=2) + "\n" == text, path


# ---------------------------------------------------------------- no untyped dict crosses a public function
#: Public functions and methods that may take or return ``dict[str, Any]`` / ``Mapping[str, Any]``, each
#: with its reason. Everything else crosses modules as a record (a frozen dataclass, or a TypedDict for a
#: JSON/CSV row written as it is). An entry that no longer has such an annotation fails the test too.
ANY_DICT_ALLOWED = {
    # Optuna's own params and attrs: a trial's params and a study's or trial's user/system attrs.
    "ensemble.search.spaces:Space.suggest": "a trial's sampled params, as Optuna's trial.params",
    "ensemble.search.spaces:Space.defaults": "the space's defaults as Optuna params (the enqueued first trial)",
    "ensemble.search.baselines.spaces:first_params": "the params Optuna enqueues as a family's first trial",
    "ensemble.search.baselines.preprocess:split_params": "a trial's Optuna params split into preprocessing/model",
    "ensemble.search.baselines.models:check_params": "a family's fixed Optuna params, checked before the search",
    "ensemble.search.baselines.studies:family_summary": "a baseline study's summary, set as study user attrs",
    "ensemble.search.cnn.study:run_search": "publish: the search spec, written as the study's user attrs",
    "ensemble.search.dbstorage:ReconnectingStorage.__init__": "stale_tags: Optuna system attrs of stale trials",
    # Keras's own contract.
    "ensemble.search.cnn.augment:RandomAffine.get_config": "Keras's Layer.get_config returns a dict of anything",
    # JSON-file edges, before they become records.
    "ensemble.pipeline.state:Stages.data": "stages.json as read (its writers add keys freely)",
    "ensemble.pipeline.stages:ReportOutcome.from_summary": "summary.json as read",
}
_ANY_DICT = ("dict[str, Any]", "Mapping[str, Any]")


def _public_functions(tree: ast.Module) -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Public module-level functions and public methods (``__init__`` included) of public classes."""
    out: list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]] = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not node.name.startswith("_"):
            out.append((node.name, node))
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for sub in node.body:
                if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef) and (
                    not sub.name.startswith("_") or sub.name == "__init__"
                ):
                    out.append((f"{node.name}.{sub.name}", sub))
    return out


def _any_dict_annotations(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    """``arg: annotation`` (``-> annotation`` for the return) of each ``dict[str, Any]``-like annotation."""
    a = fn.args
    args = [*a.posonlyargs, *a.args, *a.kwonlyargs, *[x for x in (a.vararg, a.kwarg) if x is not None]]
    found = [(x.arg, ast.unparse(x.annotation)) for x in args if x.annotation is not None]
    if fn.returns is not None:
        found.append(("->", ast.unparse(fn.returns)))
    return [f"{name}: {text}" for name, text in found if any(t in text for t in _ANY_DICT)]


def _any_dict_crossings() -> dict[str, list[str]]:
    out = {}
    for name, path in MODULES.items():
        for qual, fn in _public_functions(ast.parse(path.read_text())):
            hits = _any_dict_annotations(fn)
            if hits:
                out[f"{name}:{qual}"] = hits
    return out


def test_no_untyped_dict_crosses_a_public_function() -> None:
    """No ``dict[str, Any]`` in a public signature but Optuna's, Keras's and the JSON edges listed above."""
    crossings = _any_dict_crossings()
    new = {k: v for k, v in crossings.items() if k not in ANY_DICT_ALLOWED}
    assert not new, "untyped dicts in public signatures (use a record):\n" + "\n".join(
        f"{k} {v}" for k, v in new.items()
    )
    stale = sorted(set(ANY_DICT_ALLOWED) - set(crossings))
    assert not stale, f"allowed but no longer there (remove from ANY_DICT_ALLOWED): {stale}"


def test_the_untyped_dict_check_sees_a_signature() -> None:
    """The walk above finds a known one (not vacuous), and a record-typed function is not flagged."""
    crossings = _any_dict_crossings()
    assert crossings["ensemble.search.spaces:Space.suggest"] == ["->: dict[str, Any]"]
    assert "ensemble.report.summary:leaderboard_rows" not in crossings
