"""The DAG tells the truth: every in-package module a stage's script imports (transitively, counting
imports inside functions) and every package data file those modules read is one of the stage's
`deps` in dvc.yaml, and every dep names a path that exists (or another stage's output).

The import graph is read from the source (ast), not from a running process, so an import in a
branch that a tiny test run never takes still counts. The one dynamic import of the package, the
method registry's, is followed through the registry: fit@<m> / train@<m> also need the module
that defines method m and everything it imports.
"""
from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

SRC = ROOT / "src"
PKG = "anomaly_backbones"


def module_file(name: str) -> Path | None:
    """`anomaly_backbones.x.y` -> its file (a package's __init__.py), None when it is not a module."""
    p = SRC.joinpath(*name.split("."))
    if (p / "__init__.py").is_file():
        return p / "__init__.py"
    return p.with_suffix(".py") if p.with_suffix(".py").is_file() else None


def _imported_names(path: Path, modname: str) -> set[str]:
    """Every module name an import statement anywhere in `path` names (relative ones resolved)."""
    is_pkg = path.name == "__init__.py"
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = modname.split(".") if is_pkg else modname.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names.add(mod)
            names.update(f"{mod}.{a.name}" for a in node.names)   # `from pkg import module`
    return names


@lru_cache(maxsize=None)
def imports_of(path: Path, modname: str) -> frozenset[str]:
    """The package's modules `path` imports directly, each with the packages above it (their
    __init__ runs on import)."""
    out = set()
    for name in _imported_names(path, modname):
        parts = name.split(".")
        if parts[0] != PKG:
            continue
        for i in range(1, len(parts) + 1):
            if module_file(".".join(parts[:i])) is not None:
                out.add(".".join(parts[:i]))
    return frozenset(out)


def closure(roots: set[str], script: Path | None = None) -> set[str]:
    """Module names reachable from `script`'s imports and from `roots`."""
    todo = set(roots) | (set(imports_of(script, "__main__")) if script else set())
    seen: set[str] = set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        f = module_file(m)
        todo |= imports_of(f, m) - seen
    return seen


def data_files_read(modules: set[str]) -> set[Path]:
    """Package data files (every non-.py file under the package) whose name one of `modules`
    spells as a string constant: registry.yaml, registry_facts.yaml, templates."""
    data = [p for p in (SRC / PKG).rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")
            and "__pycache__" not in p.parts]
    read = set()
    for m in modules:
        consts = {n.value for n in ast.walk(ast.parse(module_file(m).read_text()))
                  if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        read |= {p for p in data if any(c == p.name or c.endswith("/" + p.name) for c in consts)}
    return read


def method_module(name: str) -> str:
    from anomaly_backbones.methods import get_method

    return get_method(name).__module__


def methods_reading(reads: str) -> list[str]:
    from anomaly_backbones.methods import METHODS, get_method

    return sorted(n for n in METHODS if get_method(n).reads == reads)


def stages() -> list[tuple[str, dict, set[str]]]:
    """dvc.yaml's stages with `foreach` expanded over every registered method of its kind:
    (name, stage, extra module roots)."""
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = []
    for name, st in spec.items():
        if "foreach" not in st:
            out.append((name, st, set()))
            continue
        reads = "features" if name == "fit" else "images"
        for item in methods_reading(reads):
            text = yaml.safe_dump(st["do"]).replace("${item}", item)
            out.append((f"{name}@{item}", yaml.safe_load(text), {method_module(item)}))
    return out


def dep_paths(stage: dict) -> list[str]:
    return [next(iter(d)) if isinstance(d, dict) else d for d in stage.get("deps", [])]


def outs_of_all_stages() -> set[str]:
    outs = set()
    for _, st, _ in stages():
        for o in st.get("outs", []) + st.get("metrics", []) + st.get("plots", []):
            outs.add(next(iter(o)) if isinstance(o, dict) else o)
    return outs


def needed_files(stage: dict, roots: set[str]) -> set[Path]:
    script = ROOT / re.search(r"python (stages/\S+\.py)", stage["cmd"]).group(1)
    mods = closure(roots, script)
    return {script} | {module_file(m) for m in mods} | data_files_read(mods)


def covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(ROOT)
    return any(rel == Path(d) or Path(d) in rel.parents for d in deps)


STAGES = stages()


@pytest.mark.parametrize("name,stage,roots", STAGES, ids=[s[0] for s in STAGES])
def test_every_module_and_data_file_a_stage_reads_is_a_dep(name, stage, roots):
    deps = dep_paths(stage)
    missing = sorted(str(f.relative_to(ROOT)) for f in needed_files(stage, roots) if not covered(f, deps))
    assert not missing, f"{name} reads these but dvc.yaml does not list them as deps: {missing}"


@pytest.mark.parametrize("name,stage,roots", STAGES, ids=[s[0] for s in STAGES])
def test_every_dep_exists_or_is_another_stages_output(name, stage, roots):
    outs = outs_of_all_stages()
    bad = [d for d in dep_paths(stage)
           if "${" not in d and not (ROOT / d).exists()
           and not any(d == o or Path(o) in Path(d).parents or Path(d) in Path(o).parents for o in outs)]
    assert not bad, f"{name}'s deps name paths that neither exist nor are a stage's output: {bad}"


def test_the_closure_follows_function_level_and_relative_imports():
    """On the package itself: methods/__init__ imports its base inside a function, relatively;
    the registry module reads registry.yaml by name (checked against the source, not the code
    under test: a grep of the files)."""
    methods_init = SRC / PKG / "methods" / "__init__.py"
    src = methods_init.read_text()
    direct = imports_of(methods_init, f"{PKG}.methods")
    assert f"{PKG}.methods.base" in direct
    for line in src.splitlines():
        m = re.match(r"\s+from \.\.(\w+)(?:\.(\w+))? import", line)   # indented: inside a function
        # (methods/__init__ has `from .base import` only: one level up names none here)
        if m:
            assert f"{PKG}.{m.group(1)}" in direct
            if m.group(2):
                assert f"{PKG}.{m.group(1)}.{m.group(2)}" in direct
    reg = f"{PKG}.backbones.registry"
    assert SRC / PKG / "backbones" / "registry.yaml" in data_files_read({reg})


def suggested_deps(stage: dict, roots: set[str]) -> list[str]:
    """The fewest paths that cover what a stage reads: a subpackage as its folder, a top-level
    module or the script as its file (`python tests/test_dag_deps.py` prints them per stage)."""
    paths = set()
    for f in needed_files(stage, roots):
        rel = f.relative_to(ROOT)
        if rel.parts[:2] == ("src", PKG) and len(rel.parts) > 3:
            rel = Path(*rel.parts[:3])
        paths.add(rel.as_posix())
    return sorted(paths)


def write_deps(path: Path = ROOT / "dvc.yaml") -> None:
    """Rewrite each stage's code deps (stages/, src/) in dvc.yaml to suggested_deps, keeping its
    other deps (data, outputs of other stages) and every comment: a text edit of the deps lists."""
    want: dict[str, set[str]] = {}
    for name, st, roots in STAGES:
        want.setdefault(name.split("@")[0], set()).update(suggested_deps(st, roots))
    lines, out, stage, i = path.read_text().splitlines(keepends=True), [], None, 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^  (\w+):\s*$", line)
        if m:
            stage = m.group(1)
        out.append(line)
        i += 1
        if stage in want and line.strip() == "deps:":
            indent = len(line) - len(line.lstrip()) + 2
            kept = []
            while i < len(lines) and lines[i].startswith(" " * indent + "- "):
                item = lines[i].strip()[2:]
                if not item.startswith(("stages/", "src/")):
                    kept.append(lines[i])
                i += 1
            out += [f"{' ' * indent}- {d}\n" for d in sorted(want[stage], key=lambda d: (not d.startswith("stages/"), d))]
            out += kept
    path.write_text("".join(out))


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    if "--write" in sys.argv:
        write_deps()
    for name, st, roots in STAGES:
        print(f"{name}:", *suggested_deps(st, roots), sep="\n  - ")
