"""The import structure: layers point down only, and no module imports itself back through
others. Every import counts, those inside functions and under TYPE_CHECKING included (an
import inside a function is still a dependency; it only hides the circle until it runs).

Layers, top to bottom (docs/development.md draws them): a module may import modules of its
own folder and of the layers below; `cli` and `cni` (the CNI plugin), like `process` and
`lab`, sit side by side and know nothing of each other; the top-level modules (errors, names, state, ...) are shared by every layer
and import only each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "nsrun"

LAYERS: list[tuple[str, ...]] = [
    ("cli", "cni"),  # the entries: the command line, and the CNI plugin (side by side)
    ("service",),
    ("commands",),
    ("process", "lab"),
    ("engine",),
    ("linux",),
    ("",),  # the top-level modules: shared by all
]
MAX_TOP_LEVEL = 12


def modules(package: Path) -> dict[str, Path]:
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module of the package NAME imports, wherever the import stands."""
    root = name.split(".")[0]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == root}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            if base.split(".")[0] != root:
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.add(full if full in known else base)
    out.discard(name)
    return out


def graph(package: Path) -> dict[str, set[str]]:
    mods = modules(package)
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def folder_of(name: str, package: Path) -> str:
    """The layer folder of module NAME: `cli` for pkg.cli.main, '' for a top-level module."""
    parts = name.split(".")
    if parts[1:] == ["__main__"]:
        return "cli"  # `python -m nsrun`: the command line's entry
    return parts[1] if len(parts) > 1 and (package / parts[1]).is_dir() else ""


def layer_of(name: str, package: Path = PACKAGE) -> int:
    folder = folder_of(name, package)
    for i, layer in enumerate(LAYERS):
        if folder in layer:
            return i
    raise AssertionError(f"{name}: in no layer (add its folder to LAYERS)")


def against_layers(package: Path) -> list[str]:
    wrong = []
    for name, deps in sorted(graph(package).items()):
        for dep in sorted(deps):
            here, there = layer_of(name, package), layer_of(dep, package)
            if there < here:
                wrong.append(f"{name} -> {dep} (up: {'/'.join(LAYERS[here])} imports {'/'.join(LAYERS[there])})")
            elif there == here and folder_of(name, package) != folder_of(dep, package):
                wrong.append(f"{name} -> {dep} (sideways: {folder_of(name, package)} and "
                             f"{folder_of(dep, package)} are apart)")
    return wrong


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in g:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_every_import_points_down_the_layers() -> None:
    wrong = against_layers(PACKAGE)
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_no_import_circle() -> None:
    found = cycles(graph(PACKAGE))
    assert not found, "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_checks_find_what_they_look_for(tmp_path: Path) -> None:
    """A made-up package with an import hidden in a function that runs up a layer, one that
    runs sideways, and a circle: each is found."""
    pkg = tmp_path / "nsrun"
    for folder in ("cli", "engine", "linux", "process", "lab"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("")
    (pkg / "cli" / "main.py").write_text("from nsrun.engine import up\n")
    (pkg / "engine" / "up.py").write_text("def f():\n    from nsrun.cli import main\n")
    (pkg / "linux" / "a.py").write_text("from nsrun.linux import b\nfrom nsrun import errors\n")
    (pkg / "linux" / "b.py").write_text("from . import a\n")
    (pkg / "process" / "x.py").write_text("from nsrun.lab import y\n")
    (pkg / "lab" / "y.py").write_text("")
    wrong = against_layers(pkg)
    assert wrong == ["nsrun.engine.up -> nsrun.cli.main (up: engine imports cli/cni)",
                     "nsrun.process.x -> nsrun.lab.y (sideways: process and lab are apart)"], wrong
    (pkg / "cni").mkdir()
    (pkg / "cni" / "__init__.py").write_text("")
    (pkg / "cni" / "plugin.py").write_text("from nsrun.engine import up\nfrom nsrun.cli import main\n")
    assert "nsrun.cni.plugin -> nsrun.cli.main (sideways: cni and cli are apart)" in against_layers(pkg)
    assert not [w for w in against_layers(pkg) if w.startswith("nsrun.cni.plugin -> nsrun.engine")]
    assert cycles(graph(pkg)) == [["nsrun.cli.main", "nsrun.engine.up"], ["nsrun.linux.a", "nsrun.linux.b"]]


def test_the_top_level_holds_at_most_a_dozen_modules_and_no_name_twice() -> None:
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL, top
    by_name: dict[str, list[str]] = {}
    for name in modules(PACKAGE):
        leaf = name.rpartition(".")[2]
        if leaf not in ("__init__", "__main__") and "." in name:
            by_name.setdefault(leaf, []).append(name)
    twice = {leaf: names for leaf, names in by_name.items() if len(names) > 1}
    assert not twice, f"one name in several places: {twice}"


@pytest.mark.parametrize("name", sorted(modules(PACKAGE)))
def test_every_module_is_in_a_layer(name: str) -> None:
    layer_of(name)
