"""The house keeps its shape: one installed namespace, rooms in a fixed order, no circles.

ARCHITECTURE.md documents the rooms and their order; this walks the syntax tree of every
module (imports inside functions included, since those were exactly the ones that ran back up
a layer) and checks each import against it. Imports under ``if TYPE_CHECKING:`` are
annotations only: they must keep the room order, but do not count as a circle.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: Lower rooms never import higher ones; rooms on the same floor never import each other.
FLOORS: dict[str, int] = {
    "core": 0,
    "config": 1,
    "ingest": 2,
    "detectors": 2,
    "alerts": 3,
    "simulators": 3,
    "console": 4,
    "service": 5,
}


def package_dirs() -> dict[str, Path]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    return {pkg: REPO / folder for pkg, folder in pyproject["tool"]["setuptools"]["package-dir"].items()}


def modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for pkg, folder in package_dirs().items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([pkg, *parts])] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imports_of(module: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported geowarn module, line, annotation-only) for every import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, typing_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.body:
                    visit_stmt(sub, True)
                for sub in child.orelse:
                    visit_stmt(sub, typing_only)
                continue
            visit_stmt(child, typing_only)

    def visit_stmt(node: ast.AST, typing_only: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend((a.name, node.lineno, typing_only) for a in node.names if a.name.startswith("geowarn."))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("geowarn."):
                found.append((target, node.lineno, typing_only))
                # `from geowarn.alerts import model` imports the module geowarn.alerts.model too.
                found.extend((f"{target}.{a.name}", node.lineno, typing_only) for a in node.names)
        visit(node, typing_only)

    visit(tree, False)
    return found


def room_of(module: str) -> str:
    return module.split(".")[1]


def test_every_package_folder_is_listed_for_the_build() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    listed = set(pyproject["tool"]["setuptools"]["packages"])
    found = {m for m, path in modules().items() if path.name == "__init__.py"}
    assert found == listed


def test_every_room_has_a_floor_and_the_card_folders_are_mapped() -> None:
    rooms = {room_of(pkg) for pkg in package_dirs()}
    assert rooms == set(FLOORS)
    # The user's design card fixes these folders at the top of the repository.
    for folder in ("ingest", "detectors", "alerts", "config", "simulators"):
        assert package_dirs()[f"geowarn.{folder}"] == REPO / folder


def test_no_import_runs_up_a_floor_or_across_one() -> None:
    mods = modules()
    assert len(mods) > 60, "the walk found too few modules to mean anything"
    bad = []
    for module, path in mods.items():
        here = room_of(module)
        for target, line, _ in imports_of(module, path):
            there = room_of(target)
            if there not in FLOORS and target.count(".") >= 2:
                continue  # a name imported from a package, not a module
            assert there in FLOORS, f"{path}:{line} imports {target}, which is in no room"
            if there != here and FLOORS[there] >= FLOORS[here]:
                bad.append(f"{path.relative_to(REPO)}:{line} ({here}, floor {FLOORS[here]}) imports {target} ({there}, floor {FLOORS[there]})")
    assert not bad, "imports against the floor order of ARCHITECTURE.md:\n" + "\n".join(bad)


def test_production_code_never_imports_tests_or_benchmarks() -> None:
    bad = []
    for module, path in modules().items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad += [f"{path.relative_to(REPO)}:{node.lineno} imports {n}" for n in names if n.split(".")[0] in {"tests", "benchmarks", "services", "oracles"}]
    assert not bad, "\n".join(bad)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_the_cycle_finder_finds_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_modules_import_each_other_directly_or_round_a_circle() -> None:
    mods = modules()
    graph: dict[str, set[str]] = {}
    for module, path in mods.items():
        for target, _, typing_only in imports_of(module, path):
            if typing_only:
                continue
            graph.setdefault(module, set()).add(target)
    # Names imported from a module are not modules; keep only the edges that name a module.
    graph = {m: {t for t in ts if t in mods and t != m} for m, ts in graph.items()}
    assert not _cycles(graph)


@pytest.mark.slow
def test_the_wheel_installs_one_top_level_package(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("geowarn-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"geowarn"}
    # Every module of every room is in it (a sub-package missing from pyproject's list is not).
    shipped = {n.removesuffix(".py").replace("/", ".") for n in names if n.endswith(".py")}
    missing = {m if not modules()[m].name == "__init__.py" else m + ".__init__" for m in modules()} - shipped
    assert not missing, f"modules left out of the wheel: {sorted(missing)}"
    # Package data travels with its room.
    for data in ("geowarn/config/sites.example.toml", "geowarn/console/web/index.html", "geowarn/alerts/schemas/CAP-v1.2-schema.xsd"):
        assert data in names
    assert not any(n.startswith("geowarn/tests/") or n.startswith("geowarn/benchmarks/") for n in names)


@pytest.mark.slow
def test_the_command_works_beside_files_named_like_the_old_packages(tmp_path: Path) -> None:
    """A user's config.py, alerts.py or ingest.py in the working directory once shadowed GeoWarn's
    own packages of the same names."""
    for name in ("config.py", "alerts.py", "ingest.py", "detectors.py"):
        (tmp_path / name).write_text("raise SystemExit('the wrong module was imported')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    for args in (["check-config"], ["simulate", "--list"], ["--version"]):
        run = subprocess.run([sys.executable, "-m", "geowarn.service", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, (args, run.stdout, run.stderr)
        assert "wrong module" not in run.stdout + run.stderr
    feed = tmp_path / "feed.csv"
    feed.write_text("site,device,channel,t,value\n" + "".join(f"S1,S1-EXT1,displacement,{1764400000 + 600 * i},{0.01 * i}\n" for i in range(50)))
    run = subprocess.run([sys.executable, "-m", "geowarn.service", "replay", str(feed), "--out", str(tmp_path / "out")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "out" / "alerts.jsonl").exists()
