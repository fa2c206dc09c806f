"""The package's modules in layers without cycles (docs/architecture.md, "Layers").

Every `import` and `from ... import` statement of every module counts, wherever it is (module
level, inside a function, under `if TYPE_CHECKING`): a function-level import is still a
dependency, only a later one. `from pkg import name` depends on pkg.name where that is a module,
else on pkg's __init__; importing a submodule also runs the __init__ of the packages above it
(except the importer's own, which are already running).
"""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PKG = "anomaly_backbones"
SRC = ROOT / "src"

# top to bottom; a module may import its own layer's modules (no cycle) and any layer below
LAYERS = [
    ("cli", {"__main__", "pr_comment"}),
    ("pipeline", {"pipeline", "report", "line", "sweep", "sweep_plan", "cluster", "deploy"}),
    ("library", {"methods", "backbones", "data", "pooling", "download"}),
    ("core", {"metrics", "params", "device", "resources", "features", "holdout", "dvc_client", "runner"}),
    ("base", {"files", "errors"}),
]


def modules() -> dict[str, tuple[Path, bool]]:
    """{dotted name: (file, is a package __init__)} of every module of the package."""
    out = {}
    for f in (SRC / PKG).rglob("*.py"):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (f, is_pkg)
    return out


def imports(mods: dict[str, tuple[Path, bool]]) -> dict[str, set[str]]:
    """{module: the package's modules it imports, directly or by running a package's __init__}."""
    def known(name: str) -> str:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    edges: dict[str, set[str]] = {}
    for mod, (f, is_pkg) in mods.items():
        own = {".".join(mod.split(".")[:i]) for i in range(1, mod.count(".") + 1)} | {mod}
        here = mod if is_pkg else mod.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(here.split(".")[:len(here.split(".")) - node.level + 1])
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module or ""
                targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names}
        deps = set()
        for t in targets:
            t = known(t)
            if not t.startswith(PKG):
                continue
            deps.add(t)
            parent = t.rpartition(".")[0]
            while parent:   # importing pkg.sub runs pkg/__init__.py first
                if parent not in own:
                    deps.add(parent)
                parent = parent.rpartition(".")[0]
        edges[mod] = deps - {mod}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def layer_of(mod: str) -> int | None:
    top = mod.split(".")[1] if "." in mod else None
    return next((i for i, (_, names) in enumerate(LAYERS) if top in names), None)


def test_the_finder_sees_function_level_imports_and_cycles():
    """The checker itself on a known graph: it must find what it exists to find."""
    mods = modules()
    edges = imports(mods)
    # function-level imports: methods.get_method's `from .base import Method`; device's spelling check
    assert "anomaly_backbones.methods.base" in edges["anomaly_backbones.methods"]
    assert "anomaly_backbones.params.groups" in edges["anomaly_backbones.device"]
    # `from . import resources` is the module, `from ..methods import X` the package's __init__
    assert "anomaly_backbones.resources" in edges["anomaly_backbones.device"]
    assert "anomaly_backbones.methods" in edges["anomaly_backbones.pipeline.config"]
    # a relative import at depth 2 (methods/training/base.py: `from ...backbones import normalize`)
    assert "anomaly_backbones.backbones" in edges["anomaly_backbones.methods.training.base"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    found = cycles(imports(modules()))
    assert not found, "import cycles (each line: modules that import each other, function-level included):\n" + \
        "\n".join(" <-> ".join(c) for c in found)


def test_every_module_sits_in_a_layer_and_imports_only_its_own_or_lower():
    edges = imports(modules())
    bad, unplaced = [], []
    for mod, deps in sorted(edges.items()):
        if mod == PKG:
            continue
        lm = layer_of(mod)
        if lm is None:
            unplaced.append(mod)
            continue
        for d in sorted(deps):
            ld = layer_of(d) if d != PKG else len(LAYERS) - 1
            if ld is not None and ld < lm:
                bad.append(f"{mod} ({LAYERS[lm][0]}) imports {d} ({LAYERS[ld][0]})")
    assert not unplaced, f"modules in no layer (add their package to LAYERS and docs/architecture.md): {unplaced}"
    assert not bad, "imports upward across layers:\n" + "\n".join(bad)


def test_the_stage_bodies_live_in_the_pipeline():
    """extract, fit@, train@ and aggregate are thin scripts over pipeline/ (a docstring, imports and
    a main() of a line or two); no module of the package imports a stage."""
    for name in ("03_extract", "04_fit", "04_train", "06_aggregate"):
        tree = ast.parse((ROOT / "stages" / f"{name}.py").read_text())
        body = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
        froms = [n.module for n in body if isinstance(n, ast.ImportFrom)]
        assert any(m.startswith(f"{PKG}.pipeline.") for m in froms), name
        main = next(n for n in body if isinstance(n, ast.FunctionDef) and n.name == "main")
        assert len(main.body) <= 2 and not [n for n in body if isinstance(n, ast.FunctionDef) and n is not main], name
    for mod, deps in imports(modules()).items():
        assert not any("stages" in d for d in deps), mod


def test_the_layers_in_docs_match_these():
    """docs/architecture.md names each layer with its packages, as LAYERS does."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    section = doc[doc.index("## Layers"):]
    section = section[:section.index("\n## ", 5)] if "\n## " in section[5:] else section
    for name, packages in LAYERS:
        line = next((x for x in section.splitlines() if x.lstrip("-* ").startswith(f"{name}:")), None)
        assert line is not None, f"docs/architecture.md, Layers: no line for {name!r}"
        for p in packages:
            assert p in line, f"docs/architecture.md, Layers, {name}: {p} missing"
