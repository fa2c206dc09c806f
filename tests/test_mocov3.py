"""MoCo v3 inits (weights.MocoV3Weights, checkpoints.mocov3_encoder) on fake pretraining checkpoints
laid out as the authors' main_moco.py saves them (facebookresearch/moco-v3): {"state_dict":
DDP(MoCo).state_dict(), "epoch", "arch", ...} with keys module.base_encoder.*, module.momentum_encoder.*
and module.predictor.*, the encoder's `fc` (ResNet) / `head` (ViT) being the projection MLP. The
encoders are random-init torchvision resnet50 / timm ViT-S/16 with 12 heads (their vits.py) built
under another seed than the loader's, placed in torch hub's cache where a download would land."""
from __future__ import annotations

import pytest
import torch

from anomaly_backbones.backbones import caches, get_entry, load_backbone
from anomaly_backbones.backbones.registry import pretraining
from anomaly_backbones.errors import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _url(name):
    return get_entry(name)["inits"]["mocov3"].split(":", 1)[1]


def _encoder(name):
    """The fake base encoder's state_dict (seed 7, not the loader's 1024), as the authors build it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        if name == "resnet50":
            import torchvision

            return torchvision.models.resnet50().state_dict()
        import timm   # vits.vit_small: timm's VisionTransformer, 384 wide, 12 heads, patch 16

        return timm.create_model("vit_small_patch16_224", num_heads=12).state_dict()


def _checkpoint(enc, head, extra=None):
    """main_moco.py's file: the projector replaces `head` (small fake MLP shapes: dropped by name)."""
    sd = {f"module.base_encoder.{k}": v for k, v in enc.items() if not k.startswith(head + ".")}
    sd.update({f"module.base_encoder.{head}.0.weight": torch.ones(8, 4),
               f"module.base_encoder.{head}.1.running_mean": torch.zeros(8),
               f"module.momentum_encoder.{head}.0.weight": torch.ones(8, 4),
               "module.predictor.0.weight": torch.ones(8, 8), "module.predictor.1.weight": torch.ones(8)})
    first = next(iter(enc))
    sd[f"module.momentum_encoder.{first}"] = enc[first] + 1      # the EMA twin: other values, dropped
    sd.update(extra or {})
    return {"epoch": 300, "arch": "fake", "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}}


def _place(name, ckpt, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = caches.url_cache_path(_url(name))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("name,head", [("resnet50", "fc"), ("vit_small_patch16_224", "head")])
def test_mocov3_loads_the_base_encoder_bit_for_bit(name, head, monkeypatch, tmp_path):
    enc = _encoder(name)
    _place(name, _checkpoint(enc, head), monkeypatch, tmp_path)
    monkeypatch.setattr(caches, "reachable", lambda *a, **k: pytest.fail("a cached file needs no network"))
    bb = load_backbone(name, "mocov3")
    assert bb.init == "imagenet:mocov3" and "MoCo v3" in bb.weights
    assert (bb.mean, bb.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))   # main_moco.py's Normalize
    inner = bb.model.model if hasattr(bb.model, "model") else bb.model           # ViTs: inside ViTMaps
    got = inner.state_dict()
    want = {k: v for k, v in enc.items() if not k.startswith(head + ".")}
    assert set(got) == set(want)                                  # no classifier: MoCo v3 trained none
    for k, v in want.items():
        assert torch.equal(got[k], v), k
    assert isinstance(getattr(inner, head), torch.nn.Identity)
    from anomaly_backbones.methods.training.ewc import _classifier
    assert _classifier(bb.model) is None          # panda.variant=ewc finds no classifier to take a Fisher from
    if name != "resnet50":
        assert inner.blocks[0].attn.num_heads == 12 and got["pos_embed"].shape == (1, 197, 384)
        assert load_backbone(name, "random").model.model.blocks[0].attn.num_heads == 6   # other inits: timm's
    assert pretraining(name, "mocov3") == "self-supervised"


def test_mocov3_refuses_keys_it_does_not_know(monkeypatch, tmp_path):
    name, enc = "resnet50", _encoder("resnet50")
    _place(name, _checkpoint(enc, "fc", {"module.queue": torch.zeros(4)}), monkeypatch, tmp_path)
    with pytest.raises(UserError) as e:
        load_backbone(name, "mocov3")
    msg = str(e.value)
    assert "\n" not in msg and "module.queue" in msg and "r-50-1000ep.pth.tar" in msg, msg
    _place(name, _checkpoint(enc, "fc", {"module.base_encoder.layer5.weight": torch.zeros(4)}), monkeypatch, tmp_path)
    with pytest.raises(UserError) as e:
        load_backbone(name, "mocov3")
    msg = str(e.value)
    assert "\n" not in msg and "1 unexpected keys: layer5.weight (4,)" in msg, msg


def test_mocov3_vit_position_embedding_without_class_slot_is_refused(monkeypatch, tmp_path):
    name, enc = "vit_small_patch16_224", _encoder("vit_small_patch16_224")
    enc["pos_embed"] = enc["pos_embed"][:, 1:]          # a grid-only embedding: not the authors' layout
    _place(name, _checkpoint(enc, "head"), monkeypatch, tmp_path)
    with pytest.raises(UserError) as e:
        load_backbone(name, "mocov3")
    msg = str(e.value)
    assert "\n" not in msg and "pos_embed checkpoint (1, 196, 384) vs model (1, 197, 384)" in msg, msg


def test_listing_shows_mocov3_as_self_supervised(capsys):
    import json

    from anomaly_backbones.backbones.cli import main_backbones

    main_backbones(["--family", "vit", "--json"])
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["vit_small_patch16_224"]["inits"]["mocov3"] == "self-supervised"
    assert rows["vit_small_patch16_224"]["inits"]["augreg_in1k"] == "supervised"
    main_backbones(["--family", "resnet"])
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("resnet50 "))
    assert "mocov3=self-supervised" in line and "fb_ssl_yfcc100m_ft_in1k=semi-supervised" in line


def test_checkpoint_file_init_guards_the_twelve_heads(monkeypatch, tmp_path, capsys):
    """init=<file> builds timm's ViT-S (6 heads): the authors' pretraining file is refused with the
    way to init=mocov3; a plain state_dict (say the 12-head encoder, converted) loads, with a note
    that names the configuration it did not get (the tensors alone cannot tell)."""
    name, enc = "vit_small_patch16_224", _encoder("vit_small_patch16_224")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    raw = tmp_path / "vit-s-300ep.pth"
    torch.save(_checkpoint(enc, "head"), raw)
    with pytest.raises(UserError) as e:
        load_backbone(name, str(raw))
    msg = str(e.value)
    assert "\n" not in msg and "MoCo v3 pretraining checkpoint" in msg and "init=mocov3" in msg, msg
    assert str(caches.url_cache_path(_url(name))) in msg, msg
    plain = tmp_path / "encoder.pth"
    torch.save(enc, plain)
    capsys.readouterr()
    bb = load_backbone(name, str(plain))
    out = capsys.readouterr().out
    assert "init=mocov3 ({'num_heads': 12})" in out and "note:" in out, out
    assert bb.model.model.blocks[0].attn.num_heads == 6
    assert torch.equal(bb.model.model.state_dict()["blocks.0.attn.qkv.weight"], enc["blocks.0.attn.qkv.weight"])
    load_backbone("resnet18", "random")                 # entries without init_kwargs: no note
    torch.save(_encoder("resnet50"), tmp_path / "r50.pth")
    capsys.readouterr()
    load_backbone("resnet50", str(tmp_path / "r50.pth"))
    assert "note:" not in capsys.readouterr().out
