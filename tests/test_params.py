"""The params schema (every param checked before any stage works) and `resolve` (every auto made concrete)."""
from __future__ import annotations

import runpy
import shutil
import sys

import pytest
import yaml

from anomaly_backbones.errors import UserError
from anomaly_backbones.methods import METHODS, get_method
from anomaly_backbones.params import set_params
from anomaly_backbones.params.groups import TOP
from anomaly_backbones.params.schema import check_group
from anomaly_backbones.pipeline.config import load_params, resolve, schema_groups, validate
from conftest import ROOT

LITE0 = {"blocks.1": (24, 56, 56), "blocks.2": (40, 28, 28), "blocks.4": (112, 14, 14)}


@pytest.fixture
def params():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_params_yaml_lists_every_param_with_the_schema_default(params):
    """params.yaml is where users read the defaults: it must show every param, with the value
    the code falls back to when one is absent."""
    assert set(params) == set(TOP) | set(schema_groups())
    for k, spec in TOP.items():
        assert params[k] == spec.default, k
    for group, schema in schema_groups().items():
        assert set(params[group]) == set(schema), group
        for k, spec in schema.items():
            assert params[group][k] == spec.default, f"{group}.{k}"


def test_validate_fills_absent_params_and_converts(params):
    del params["padim"]["sigma"]
    params["spade"]["chunk_mb"] = 32   # an int for a float param
    p = validate(params)
    assert p["padim"]["sigma"] == 4.0 and p["spade"]["chunk_mb"] == 32.0 and isinstance(p["spade"]["chunk_mb"], float)


@pytest.mark.parametrize("change,needle", [
    ({"seed": -1}, "`seed` must be an integer in [0, 4294967295], not -1"),
    ({"seed": True}, "`seed` must be an integer"),
    ({"seed": 1.5}, "`seed` must be an integer"),
    ({"padim.d": 0}, "`padim.d` must be auto or all or an integer >= 1, not 0"),
    ({"padim.d": "half"}, "`padim.d` must be auto or all or an integer >= 1"),
    ({"spade.k": 0}, "`spade.k` must be an integer >= 1"),
    ({"patchcore.coreset": "approx"}, "`patchcore.coreset` must be fast | exact, not 'approx'"),
    ({"patchcore.coreset_ratio": 0}, "`patchcore.coreset_ratio` must be a number in (0, 1]"),
    ({"cflow.condition_vector": 130}, "`cflow.condition_vector` must be a positive multiple of 4, not 130"),
    ({"cflow.lr": float("nan")}, "`cflow.lr` must be a number > 0"),
    ({"extract.dtype": "float64"}, "`extract.dtype` must be float32 | float16"),
    ({"extract.batch_size": 0}, "`extract.batch_size` must be an integer >= 1"),
    ({"latency.runs": -1}, "`latency.runs` must be an integer >= 0"),
    ({"data.crop": 300}, "`data.crop` (300) must be <= `data.resize` (256)"),
    ({"data.dataset": "mvtek"}, "`data.dataset` must be one of synthetic, folder, mvtec, mtd, visa, btad, mpdd, "
                                "mvtec_ad2, real_iad (did you mean 'mvtec'?)"),
    ({"data.categories": ["..", "bottle"]}, "`data.categories`: '..' is not a category folder name"),
    ({"data.max_image_pixels": 0}, "`data.max_image_pixels` must be an integer >= 1"),
    ({"data.real_iad_setting": "fuiad_0.3"}, "`data.real_iad_setting` must be multi_view | single_view | fuiad_0.0 | "
                                             "fuiad_0.1 | fuiad_0.2 | fuiad_0.4, not 'fuiad_0.3'"),
    ({"data.real_iad_setting": "single_view"}, "`data.real_iad_setting` (single_view) applies to data.dataset=real_iad "
                                               "only (not synthetic)"),
    ({"methods": ["padim", "padim"]}, "`methods` lists ['padim'] more than once"),
    ({"methods": ["padim", "knn"]}, "unknown method 'knn' in `methods`"),
    ({"methods": []}, "`methods` must be a non-empty list"),
    ({"layers": []}, "`layers` must be auto or a non-empty list"),
    ({"synthetic.categories": ["disc", "tile"]}, "`synthetic.categories` has unknown categories ['tile']"),
])
def test_a_bad_value_is_one_line_naming_the_param(params, change, needle):
    for key, value in change.items():
        node = params
        *parents, last = key.split(".")
        for k in parents:
            node = node[k]
        node[last] = value
    with pytest.raises(UserError) as e:
        validate(params)
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("where,key,needle", [
    ("padim", "dd", "`padim.dd` is not a param of padim; did you mean `d`?"),
    ("spade", "kapa", "did you mean `kappa`?"),
    ("cflow", "epoch", "did you mean `epochs`?"),
    ("data", "categorys", "did you mean `categories`?"),
    (None, "methds", "`methds` is not a param; did you mean `methods`"),
    (None, "padimm", "did you mean `padim`"),
])
def test_unknown_keys_in_every_group_say_did_you_mean(params, where, key, needle):
    (params if where is None else params[where])[key] = 5
    with pytest.raises(UserError, match="did you mean") as e:
        validate(params)
    assert needle in str(e.value)


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_rejects_unknown_keys_and_wrong_types(name):
    cls = get_method(name)
    with pytest.raises(UserError, match=f"`{name}.nonsense` is not a param"):
        cls({"nonsense": 1}, ["a"])
    first = next(iter(cls.PARAMS))
    with pytest.raises(UserError, match=f"`{name}.{first}` must be"):
        cls({first: {"a": 1}}, ["a"])


def test_resolve_makes_every_auto_concrete(params):
    p = validate(params)
    r = resolve(p)
    assert r["layers"] == ["blocks.1", "blocks.2", "blocks.4"]
    assert r["patchcore"]["layers"] == ["blocks.2", "blocks.4"]
    assert r["cache_layers"] == ["blocks.1", "blocks.2", "blocks.4"]
    assert r["padim"]["d"] == "auto"                         # needs the cached shapes
    assert resolve(p, LITE0)["padim"]["d"] == 176            # registry d null: every channel
    assert p["layers"] == "auto" and p["padim"]["d"] == "auto"   # the input is not changed

    p["backbone"], p["layers"] = "resnet18", "auto"
    r = resolve(p, {"layer1": (64, 56, 56), "layer2": (128, 28, 28), "layer3": (256, 14, 14)})
    assert r["padim"]["d"] == 100                            # the registry's d
    p["layers"] = ["layer1"]
    assert resolve(p, {"layer1": (64, 56, 56)})["padim"]["d"] == 64   # fewer channels than the registry's d
    p["padim"]["d"] = 65
    with pytest.raises(UserError, match=r"`padim.d` = 65 is out of range.*\[1, 64\]"):
        resolve(p, {"layer1": (64, 56, 56)})
    p["padim"]["d"] = 64
    assert resolve(p, {"layer1": (64, 56, 56)})["padim"]["d"] == 64
    p["padim"]["d"], p["patchcore"]["layers"] = "all", ["layer4"]
    r = resolve(p, {"layer1": (64, 56, 56)})
    assert r["padim"]["d"] == 64 and r["cache_layers"] == ["layer1", "layer4"]   # what patchcore adds is cached
    p["backbone"], p["layers"], p["padim"]["d"] = "wide_resnet50_2", "auto", "auto"
    assert resolve(p, {"layer1": (256, 56, 56), "layer2": (512, 28, 28), "layer3": (1024, 14, 14)})["padim"]["d"] == 550


def test_extract_depends_on_every_param_that_changes_the_cached_layers():
    """dvc.yaml must re-run extract when a method's own `layers` changes what is cached."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    extract_params = set(stages["extract"]["params"])
    assert {"seed", "backbone", "init", "layers", "extract"} <= extract_params
    caching = [name for name in METHODS if "layers" in get_method(name).PARAMS and "probe" in get_method(name)
               .cached_layers(check_group(name, get_method(name).PARAMS, {"layers": ["probe"]}), ["a"])]
    assert "patchcore" in caching   # the image-level methods' `layers` pick among pooled layers: never cached
    for name in caching:
        assert f"{name}.layers" in extract_params, name


def test_every_stage_validates_all_params_before_working(tmp_path, monkeypatch, capsys):
    """A bad param of the last stage stops the first one, with one line and no output written."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    set_params(tmp_path / "params.yaml", **{"cflow.lr": -1})
    monkeypatch.chdir(tmp_path)
    for stage in ("01_generate.py", "02_prepare.py", "03_extract.py", "05_latency.py", "06_aggregate.py"):
        monkeypatch.setattr(sys, "argv", [stage])
        with pytest.raises(SystemExit) as e:
            runpy.run_path(str(ROOT / "stages" / stage), run_name="__main__")
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "`cflow.lr` must be a number > 0, not -1" in err, (stage, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
    monkeypatch.setattr(sys, "argv", ["04_fit.py", "padim"])
    with pytest.raises(SystemExit):
        runpy.run_path(str(ROOT / "stages" / "04_fit.py"), run_name="__main__")
    assert "`cflow.lr`" in capsys.readouterr().err


def test_invalid_yaml_is_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text("seed: [1,\n")
    with pytest.raises(UserError) as e:
        load_params(tmp_path / "params.yaml")
    assert "is not valid YAML" in str(e.value) and "\n" not in str(e.value)


def test_the_params_layer_imports_no_torch():
    """The params layer (reading params.yaml, checking every group that is not a method's, the
    `device` spelling) works where torch cannot be imported: a subprocess whose import system
    refuses torch, torchvision and timm. The method groups are checked against schemas declared
    on the method classes (pipeline.config), which do import torch."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'torchvision', 'timm'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from anomaly_backbones.errors import UserError\n"
        "from anomaly_backbones.params import GROUPS, TOP, check_params, read_params\n"
        "raw = read_params(sys.argv[1])\n"
        "mine = {k: v for k, v in raw.items() if k in TOP or k in GROUPS}\n"
        "p = check_params(mine, GROUPS)\n"
        "assert p['device'] == 'auto' and not any(m.split('.')[0] == 'torch' for m in sys.modules)\n"
        "try:\n"
        "    check_params({**mine, 'device': 'gpu0'}, GROUPS)\n"
        "except UserError as e:\n"
        "    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code, str(ROOT / "params.yaml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "device" in r.stdout and "cuda:N" in r.stdout
