"""The docs the code and the docs point to exist: every `docs/<name>.md` named in a source file,
a bench script, a stage, a test, a config file or a doc is a file of docs/; and params.yaml's
comment on `methods` names every method that can be listed there."""
from __future__ import annotations

import re

import yaml

from anomaly_backbones.methods import METHODS, get_method
from conftest import ROOT

TEXT = ("*.py", "*.md", "*.yaml", "*.yml", "*.toml", "Makefile", "*.cfg", "*.txt", "*.sh")
SKIP = {".git", ".venv", ".dvc", "data", "outputs", "reports", "metrics", "node_modules", "__pycache__"}


def project_files():
    for pattern in TEXT:
        for f in ROOT.rglob(pattern):
            if not SKIP & set(f.relative_to(ROOT).parts) and f.is_file():
                yield f


def test_every_docs_path_named_exists():
    named = {}
    for f in project_files():
        for path in re.findall(r"\bdocs/[\w.-]+\.md\b", f.read_text(errors="replace")):
            named.setdefault(path, []).append(str(f.relative_to(ROOT)))
    assert "docs/architecture.md" in named and "docs/performance.md" in named   # the search sees them
    missing = {p: where for p, where in named.items() if not (ROOT / p).is_file()}
    assert not missing, f"docs named but absent: {missing}"


def test_params_yaml_comment_on_methods_lists_every_cache_method():
    """`methods` takes the methods on the feature cache, `train_methods` those that train the
    backbone: each comment names all of its kind (the registry's classes say which)."""
    lines = (ROOT / "params.yaml").read_text().splitlines()
    comment = {k: next(x for x in lines if x.startswith(f"{k}:")).split("#", 1)[1]
               for k in ("methods", "train_methods")}
    for name in METHODS:
        key = "methods" if get_method(name).reads == "features" else "train_methods"
        assert re.search(rf"\b{name}\b", comment[key]), (key, name, comment[key])
    assert yaml.safe_load((ROOT / "params.yaml").read_text())["methods"]   # the file still parses


def test_no_merge_conflict_markers():
    """A merge whose conflicts were committed unresolved (it happened to README and
    docs/performance.md once) leaves these lines; nothing in the project begins with them."""
    marker = re.compile(r"^(<{7} |>{7} |={7}$)", re.M)
    found = [str(f.relative_to(ROOT)) for f in project_files() if marker.search(f.read_text(errors="replace"))]
    assert not found, found
