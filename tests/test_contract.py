"""The method contract (methods/base.py): one class per method declares everything about it, the
registry is a list of names, and adding a method is the example in docs/architecture.md."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import anomaly_backbones.methods as methods
from anomaly_backbones.errors import UserError
from anomaly_backbones.methods import METHODS, get_method
from anomaly_backbones.params import set_params
from anomaly_backbones.pipeline.config import load_params, resolve
from anomaly_backbones.pipeline.fit import fit_predict
from conftest import ROOT, make_cache


@pytest.fixture
def extra_methods(tmp_path, monkeypatch):
    """A folder of method modules searched after methods/ (as a new file there would be), and the
    registry extended by name; both undone after the test."""
    folder = tmp_path / "extra"
    folder.mkdir()
    monkeypatch.setattr(methods, "__path__", [*methods.__path__, str(folder)])
    added: list[str] = []
    yield folder, added
    for name in added:
        METHODS.remove(name)
        sys.modules.pop(f"anomaly_backbones.methods.{name}", None)


def docs_example() -> str:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    section = doc[doc.index("## Adding a method"):]
    start = section.index("```python\n") + len("```python\n")
    return section[start:section.index("```", start)]


def test_the_adding_a_method_example_runs_as_the_fit_stage_runs_it(tmp_path, extra_methods):
    """docs/architecture.md's example, as its one new file, its name in METHODS and its group in a
    params.yaml, validated, resolved, fitted and scored by pipeline.fit.fit_predict; its scores are
    the distance to the training mean computed here with numpy, upsampled by torch's bilinear
    interpolation (sigma 0: no blur), each image's maximum (the reference)."""
    folder, added = extra_methods
    code = docs_example()
    body = [x for x in code.splitlines() if x.strip() and not x.startswith(("import", "from"))]
    assert len(body) <= 10, f"the example has {len(body)} lines of code"
    (folder / "mean_distance.py").write_text(code)
    METHODS.append("mean_distance")
    added.append("mean_distance")
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text() + "\nmean_distance:\n  sigma: 0.0\n")
    set_params(params, methods=["padim", "mean_distance"], layers=["a"])
    p = load_params(params)
    assert p["mean_distance"] == {"sigma": 0.0}

    rng = np.random.default_rng(0)
    tr, te = rng.normal(size=(8, 3, 4, 4)), rng.normal(size=(4, 3, 4, 4))
    te[2, :, 1, 2] += 6.0                            # one anomalous position of one test image
    train, test = make_cache(tmp_path / "cache", {"a": tr}, {"a": te}, image_size=16)
    s = fit_predict("mean_distance", p, train, test)
    grid = np.linalg.norm(te.astype(np.float32) - tr.astype(np.float32).mean(0), axis=1)   # (4, 4, 4)
    want = F.interpolate(torch.from_numpy(grid)[:, None], size=(16, 16), mode="bilinear",
                         align_corners=False)[:, 0].numpy()
    assert s.maps.shape == (4, 16, 16) and s.scores.argmax() == 2
    np.testing.assert_allclose(s.maps, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s.scores, want.reshape(4, -1).max(1), rtol=1e-5)
    assert get_method("mean_distance").level == "pixel" and get_method("mean_distance").reads == "features"


def test_a_module_whose_class_has_another_name_is_refused(extra_methods):
    """The old registry kept a class's defaults silently when its `name` differed from its entry."""
    folder, added = extra_methods
    (folder / "misnamed.py").write_text("from anomaly_backbones.methods.base import Method\n\n"
                                        "class Misnamed(Method):\n    name = 'mis_named'\n")
    METHODS.append("misnamed")
    added.append("misnamed")
    with pytest.raises(RuntimeError, match="one Method subclass with name = 'misnamed'"):
        get_method("misnamed")


def test_a_wrong_level_or_reads_is_refused_where_the_class_is_declared():
    from anomaly_backbones.methods.base import Method

    with pytest.raises(TypeError, match="level must be pixel"):
        type("Bad", (Method,), {"name": "bad", "level": "pixels"})


def test_each_registered_name_is_its_modules_class_with_its_schema():
    files = {f.stem for f in (ROOT / "src/anomaly_backbones/methods").rglob("*.py")}
    for name in METHODS:
        cls = get_method(name)
        assert cls.name == name and name in files, name
        assert cls.PARAMS, name                                    # every method has a params group
        assert set(cls.RESOLVES_AUTO) <= {k for k, v in cls.PARAMS.items() if "auto" in v.special}, name


def test_an_unresolved_auto_reaching_a_method_is_refused(tmp_path):
    """padim.d = auto needs the cache's channels (resolve); PaDiM given `auto` used to keep every
    channel silently."""
    with pytest.raises(UserError, match=r"`padim.d` still `auto`"):
        get_method("padim")({}, ["a"])
    p = load_params(ROOT / "params.yaml")
    r = resolve(p, {"blocks.1": (24, 56, 56), "blocks.2": (40, 28, 28), "blocks.4": (112, 14, 14)})
    assert get_method("padim")(r["padim"], r["layers"]).params["d"] == 176
    # the autos a method resolves itself from what it is given stay allowed
    assert get_method("patchcore")({}, ["x", "y", "z"]).layers == ["y", "z"]
    assert get_method("svdd")({}, ["x"]).params["C"] == "auto"


@pytest.mark.parametrize("name,stage", [("panda", "methods"), ("padim", "train_methods")])
def test_a_method_listed_for_the_other_stage_is_refused(tmp_path, name, stage):
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    set_params(params, **{stage: [name]})
    with pytest.raises(UserError, match=f"{name} (trains the backbone|reads the feature cache)"):
        load_params(params)
