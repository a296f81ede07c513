"""The architecture, enforced (docs/architecture.md): three layers whose imports point one way.

``im_pipeline`` (the library) imports neither Prefect, nor argparse, nor the orchestration packages;
``im_pipeline_tasks`` (``tasks/``) imports the library and Prefect, never the flows; ``im_pipeline_flows``
(``flows/``, with the CLI) sits on top. Imports are read from the source (every ``import`` statement, also inside
functions), so a lazy import counts as much as a top-level one.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIBRARY, TASKS, FLOWS = ROOT / "im_pipeline", ROOT / "tasks", ROOT / "flows"

MAX_LINES = 400
"""No library module longer than this: past it a file holds more than one idea."""


def _imports(path: Path, root: Path = ROOT) -> set[str]:
    """Every module ``path`` imports (absolute names; relative imports resolved against its package)."""
    package = path.relative_to(root).parent.parts
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                names.add(".".join([*base, *([node.module] if node.module else [])]))
            elif node.module:
                names.add(node.module)
    return names


def _top(name: str) -> str:
    return name.split(".", 1)[0]


def _modules(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", _modules(LIBRARY), ids=lambda p: str(p.relative_to(ROOT)))
def test_library_imports_no_orchestration(path: Path) -> None:
    forbidden = {"prefect", "argparse", "im_pipeline_flows", "im_pipeline_tasks", "flows", "tasks"}
    rel = str(path.relative_to(ROOT))
    found = sorted(n for n in _imports(path) if _top(n) in forbidden)
    assert not found, f"{rel} imports {found}: the library must not know its orchestration or CLI"


@pytest.mark.parametrize("path", _modules(TASKS), ids=lambda p: str(p.relative_to(ROOT)))
def test_tasks_import_no_flows(path: Path) -> None:
    found = sorted(n for n in _imports(path) if _top(n) in {"im_pipeline_flows", "flows", "tasks", "argparse"})
    assert not found, f"{path.relative_to(ROOT)} imports {found}: tasks sit below the flows"


def test_nothing_imports_the_old_package_names() -> None:
    """``flows`` / ``tasks`` are folder names only: code imports ``im_pipeline_flows`` / ``im_pipeline_tasks``."""
    users = []
    for folder in ("im_pipeline", "tasks", "flows", "tests", "bench", "docs"):
        for path in _modules(ROOT / folder):
            old = sorted(n for n in _imports(path) if _top(n) in {"flows", "tasks"})
            if old:
                users.append(f"{path.relative_to(ROOT)}: {old}")
    assert not users


def test_library_modules_are_small() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in _modules(LIBRARY)
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}, f"over {MAX_LINES} lines: split by concern"


def test_every_package_is_installed() -> None:
    """pyproject lists packages explicitly (for the folder → name mapping): a new sub-package must be listed."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    mapping = {v: k for k, v in tool["package-dir"].items()}
    on_disk = set()
    for init in (*LIBRARY.rglob("__init__.py"), *TASKS.rglob("__init__.py"), *FLOWS.rglob("__init__.py")):
        parts = init.parent.relative_to(ROOT).parts
        on_disk.add(".".join([mapping.get(parts[0], parts[0]), *parts[1:]]))
    assert on_disk == set(tool["packages"])
    assert tool["package-dir"] == {"im_pipeline_tasks": "tasks", "im_pipeline_flows": "flows"}


def test_installed_names_resolve_to_the_folders() -> None:
    import im_pipeline_flows
    import im_pipeline_tasks

    assert Path(im_pipeline_flows.__file__).parent == FLOWS
    assert Path(im_pipeline_tasks.__file__).parent == TASKS


def test_the_checker_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The checks above could pass by not seeing imports: they must see one inside a function and a relative one."""
    path = tmp_path / "im_pipeline" / "evaluation" / "probe.py"
    path.parent.mkdir(parents=True)
    path.write_text("def f():\n    import prefect\n    from ..training import masking\n", encoding="utf-8")
    assert _imports(path, tmp_path) == {"prefect", "im_pipeline.training"}


def test_architecture_doc_lists_every_module() -> None:
    """docs/architecture.md has one line per module: a module added or removed without it fails here."""
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `([^`]+\.py)` \|", doc, flags=re.M))
    on_disk = {str(p.relative_to(ROOT)) for folder in (LIBRARY, TASKS, FLOWS) for p in _modules(folder)}
    assert listed == on_disk, {"not listed": sorted(on_disk - listed), "gone": sorted(listed - on_disk)}


def _environ(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "environ"


@pytest.mark.parametrize("path", _modules(FLOWS), ids=lambda p: str(p.relative_to(ROOT)))
def test_importing_a_flow_module_changes_no_environment(path: Path) -> None:
    """Flows only wire: no module-level ``os.environ`` edits (Prefect's settings are the CLI's, flows/cli/run.py)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = [n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    edits = []
    for sub in (s for n in top for s in ast.walk(n)):
        call = isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute) and _environ(sub.func.value)
        if call and sub.func.attr in {"setdefault", "update", "pop", "clear", "__setitem__"}:
            edits.append(sub.lineno)
        if isinstance(sub, (ast.Assign, ast.AugAssign)):
            targets = sub.targets if isinstance(sub, ast.Assign) else [sub.target]
            edits += [sub.lineno for t in targets if isinstance(t, ast.Subscript) and _environ(t.value)]
    assert not edits, f"{path.relative_to(ROOT)}: module-level os.environ edits at lines {edits}"


def test_the_environment_check_sees_an_edit(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import os\nfor k in ('A',):\n    os.environ.setdefault(k, '1')\nos.environ['B'] = '2'\n")
    tree = ast.parse(probe.read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]
    assert any(_environ(c.func.value) and c.func.attr == "setdefault" for c in calls)
