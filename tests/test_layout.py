"""The layout stays one-way: no import cycle, SQL only in store/, core/ imports nothing of the project,
and only the four entry points at the root (read from the source with ast, imports inside functions too)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from emulator.harness import ROOT

# What the app and its command line must start without: each comes with the request or command that needs it.
HEAVY_MODULES = ("lxml", "requests", "sqlite3", "sqlite_utils", "apscheduler", "prometheus_client", "emulator.catalog",
                 "emulator.server", "emulator.retailcrm", "store", "feeds.build", "exchange.catalog_parser")
PACKAGES = ("core", "store", "moysklad", "retailcrm", "feeds", "exchange", "orders", "health", "emulator")
ROOT_MODULES = ("app", "wsgi", "scheduler")
SQL_CALLS = {"execute", "executemany", "executescript", "query"}


def project_modules() -> dict[str, Path]:
    """Every importable module of the project (tests and bench scripts are not part of it)."""
    modules = {name: ROOT / f"{name}.py" for name in ROOT_MODULES}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py") if (ROOT / package).is_dir() else ():
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_modules(module: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``module`` imports anywhere in its file; ``from pkg import name`` counts
    as importing ``pkg.name`` when that is a module, else ``pkg`` itself."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imported_modules(name, path, set(modules)) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_project_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 40, "the checker found too few modules to be looking at the project"
    assert cycles(graph) == []


def test_the_cycle_check_catches_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_core_imports_nothing_of_the_project():
    graph = import_graph()
    outside = {module: sorted(t for t in targets if t.split(".")[0] != "core")
               for module, targets in graph.items() if module.split(".")[0] == "core"}
    assert {module: targets for module, targets in outside.items() if targets} == {}


def test_only_the_entry_points_sit_at_the_root():
    assert sorted(path.name for path in ROOT.glob("*.py")) == ["app.py", "gunicorn.conf.py", "scheduler.py", "wsgi.py"]


def test_sql_runs_only_in_the_store():
    """No execute/executemany (nor sqlite-utils' query) outside store/; the emulator has no database."""
    offenders = []
    for module, path in project_modules().items():
        if module.split(".")[0] in ("store", "emulator"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SQL_CALLS:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.func.attr}()")
    assert offenders == []


def test_the_command_line_starts_without_the_heavy_modules(tmp_path):
    """`flask --app app feeds build --help` registers every blueprint and command but loads none of the heavy
    libraries (start-up time is measured in bench/summary.py)."""
    config = tmp_path / "config.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\nmoysklad:\n  token: unused\n", encoding="utf-8")
    script = ("import sys\nfrom flask.cli import main\nsys.argv = ['flask', '--app', 'app', 'feeds', 'build', '--help']\n"
              "try:\n    main()\nexcept SystemExit:\n    pass\nprint('LOADED', *sorted(sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=dict(os.environ, SKLADBRIDGE_CONFIG=str(config)),
                          capture_output=True, text=True, timeout=60, check=True)
    assert "Usage: flask feeds build" in done.stdout
    loaded = done.stdout.split("LOADED", 1)[1].split()
    assert "exchange.web" in loaded and "feeds.cli" in loaded  # the blueprints and commands are there...
    assert [m for m in loaded if m.startswith(HEAVY_MODULES)] == []  # ...without what they use
