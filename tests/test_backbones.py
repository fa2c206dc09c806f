"""Backbones: registry and its stored facts, names, layers and d, parameter counts, feature
extraction, the listing. Weights and inits: tests/test_weights.py.

All offline: only random inits are built here.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from anomaly_backbones.backbones import (FeatureExtractor, get_entry, load_backbone, param_counts, registry,
                                         registry_d, resolve_layers)
from anomaly_backbones.backbones.cli import main_backbones
from anomaly_backbones.backbones.counts import count_model
from anomaly_backbones.backbones.ort_extractor import trunk
from anomaly_backbones.backbones.registry import stored_counts
from anomaly_backbones.errors import UserError

ENTRIES = registry()
NAMES = [e["name"] for e in ENTRIES]
SMALL = 64            # input side for dim checks (Inception v3 needs >= 75 px)
RECOUNT = "stale registry_facts.yaml: run `python -m anomaly_backbones.backbones.counts`"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
    step = getattr(bb.model, "stride", (1, 1))[0]   # transformers (backbones/tokens.py): whole patches
    side = -(-side // step) * step
    feats = FeatureExtractor(bb.model, resolve_layers(name, "auto"))(_x(side=side))
    assert list(feats) == e["layers"]
    assert all(v.dim() == 4 and v.shape[0] == 1 and torch.isfinite(v).all() for v in feats.values())
    dim = sum(v.shape[1] for v in feats.values())
    assert dim == e["dim"], f"{name}: real dim {dim} != registry dim {e['dim']}"
    if e["study_dim"] is not None and e["study_dim"] != dim:
        assert "study" in e["note"].lower(), f"{name}: dim differs from the study without a note"
    # the stored parameter counts are this model's (counted on the built model, not the meta one)
    assert stored_counts(name, e["layers"]) == count_model(bb.model, e["layers"]), f"{name}: {RECOUNT}"


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
    assert registry_d("resnet10t") is None       # outside the registry: PaDiM keeps every channel
    with pytest.raises(UserError, match="(?i)did you mean.*resnet10t"):
        resolve_layers("resnet10tt", "auto")


def test_resolve_layers():
    assert resolve_layers("resnet18", "auto") == ["layer1", "layer2", "layer3"]
    assert resolve_layers("resnet18", ("layer2", "layer3")) == ["layer2", "layer3"]
    assert resolve_layers("resnet18", "layer1, layer3") == ["layer1", "layer3"]
    for bad in ([], ["layer1", "layer1"], [1, 2], 5):
        with pytest.raises(UserError, match="layers"):
            resolve_layers("resnet18", bad)


def test_registry_d():
    assert registry_d("resnet18") == 100 and registry_d("wide_resnet50_2") == 550
    assert registry_d("tf_efficientnet_lite0") is None          # registry d null: no reduction
    assert registry_d("resnet10t") is None and registry_d("no_such_net") is None
    for e in ENTRIES:
        assert registry_d(e["name"]) == (None if e["d"] in (None, "all") else e["d"])


# ------------------------------------------------------------------------------------------- counts

def _conv(cin, cout, k, bias=False):
    return cin * cout * k * k + (cout if bias else 0)


def _bn(c):
    return 2 * c


def _basic_block(cin, cout, down):
    """torchvision ResNet BasicBlock: two 3x3 convs with BN, a 1x1 conv + BN shortcut when it downsamples."""
    return _conv(cin, cout, 3) + _bn(cout) + _conv(cout, cout, 3) + _bn(cout) + (
        _conv(cin, cout, 1) + _bn(cout) if down else 0)


def test_param_counts_by_hand():
    """Trunk = the parameters up to the deepest layer, counted by hand from the architectures."""
    stem = _conv(3, 64, 7) + _bn(64)
    layer1 = 2 * _basic_block(64, 64, False)
    layer2 = _basic_block(64, 128, True) + _basic_block(128, 128, False)
    layer3 = _basic_block(128, 256, True) + _basic_block(256, 256, False)
    layer4 = _basic_block(256, 512, True) + _basic_block(512, 512, False)
    fc = 512 * 1000 + 1000
    assert param_counts("resnet18") == {"trunk": stem + layer1 + layer2 + layer3,                 # 2.78M
                                        "full": stem + layer1 + layer2 + layer3 + layer4 + fc}  # 11.69M
    assert param_counts("resnet18", ["layer1"])["trunk"] == stem + layer1
    assert param_counts("resnet18", ["layer2", "layer1"])["trunk"] == stem + layer1 + layer2   # order-free
    vgg11 = [(3, 64), (64, 128), (128, 256), (256, 256), (256, 512), (512, 512), (512, 512), (512, 512)]
    features = sum(_conv(i, o, 3, bias=True) for i, o in vgg11)                                 # 9.22M
    classifier = 512 * 7 * 7 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000
    assert param_counts("vgg11") == {"trunk": features, "full": features + classifier}        # 132.86M
    alex = [(3, 64, 11), (64, 192, 5), (192, 384, 3), (384, 256, 3), (256, 256, 3)]
    assert param_counts("alexnet")["trunk"] == sum(_conv(i, o, k, bias=True) for i, o, k in alex)
    assert param_counts("alexnet", ["features.0"])["trunk"] == _conv(3, 64, 11, bias=True)


@pytest.mark.parametrize("name", ["convnext_tiny", "googlenet", "inception_v3", "regnet_y_400mf",
                                  "tf_efficientnet_lite0", "resnet50_ibn_a", "densenet121"])
def test_trunk_is_what_the_onnx_export_keeps(name):
    """The trunk counted from the parameters a forward pass reads = the parameters of the fx graph the
    ONNX export cuts after the deepest layer (dead code removed), on architectures with parameters
    used by a parent module (ConvNeXt's layer scale), auxiliary heads (GoogLeNet, Inception v3), a
    model that cannot be built on the meta device (RegNet) and dense connections (DenseNet)."""
    layers = resolve_layers(name, "auto")
    model = load_backbone(name, "random", seed=0).model
    cut = sum(p.numel() for p in trunk(model, layers, name).parameters())
    assert param_counts(name)["trunk"] == count_model(model, layers)["trunk"] == cut
    shallow = layers[:1]
    cut = sum(p.numel() for p in trunk(model, shallow, name).parameters())
    assert param_counts(name, shallow)["trunk"] == cut < param_counts(name)["trunk"]


def test_param_counts_outside_the_registry_and_bad_input():
    counts = param_counts("resnet10t", ["layer1", "layer2"])
    model = load_backbone("resnet10t", "random").model
    assert counts["full"] == sum(p.numel() for p in model.parameters())
    assert counts["trunk"] == sum(p.numel() for p in trunk(model, ["layer1", "layer2"], "resnet10t").parameters())
    with pytest.raises(UserError, match="`layers`"):
        param_counts("resnet10t")                       # no registry default
    with pytest.raises(UserError, match="layer9"):
        param_counts("resnet18", ["layer1", "layer9"])
    with pytest.raises(UserError, match="(?i)did you mean"):
        param_counts("resnet-18")


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
        assert {"name", "family", "layers", "dim", "d", "params", "params_trunk", "weights_offline"} <= set(r)
        assert r["weights_offline"] is True and r["params"] > r["params_trunk"] > 100_000
    model = load_backbone("tf_efficientnet_lite0", "random").model
    assert rows[0]["params"] == sum(p.numel() for p in model.parameters())
    assert rows[0]["params_trunk"] == count_model(model, rows[0]["layers"])["trunk"]
    main_backbones(["--family", "vgg"])
    out = capsys.readouterr().out
    assert [ln.split()[4:6] for ln in out.splitlines() if ln.startswith("vgg11 ")] == [["9.2M", "132.9M"]]
    main_backbones(["--family", "googlenet"])
    out = capsys.readouterr().out
    assert "googlenet" in out and "1248" in out
    with pytest.raises(UserError) as ei:
        main_backbones(["--family", "transformers"])
    assert "resnet" in str(ei.value) and "efficientnet_lite" in str(ei.value)


def test_listing_imports_no_torch():
    """`python -m anomaly_backbones backbones` reads the stored facts: no torch, timm or torchvision."""
    code = ("import sys; from anomaly_backbones.__main__ import main; main(['backbones', '--json']); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm', 'torchvision')), "
            "file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert [row["name"] for row in json.loads(r.stdout)] == NAMES
    assert r.stderr.strip() == "[]"


def test_registry_d_is_honoured_at_the_registry_layers():
    """#29: the study's d is used as stated: never above the channels of the registry's layers
    (`backbones` says so; _resolve_d would otherwise cap it silently)."""
    from anomaly_backbones.backbones import registry

    over = [(e["name"], e["d"], e["dim"]) for e in registry() if isinstance(e["d"], int) and e["d"] > e["dim"]]
    assert over == []
