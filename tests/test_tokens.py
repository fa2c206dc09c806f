"""Transformers as convnets (backbones/tokens.py): the maps on the patch grid against timm's own
`forward_intermediates` on the same input, the pooled vector against timm's forward_features,
the input-side rule, the engines. Random init only (offline); small inputs, one thread."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from anomaly_backbones.backbones import FeatureExtractor, get_entry, load_backbone, resolve_layers
from anomaly_backbones.backbones.ort_extractor import make_extractor
from anomaly_backbones.backbones.tokens import SwinMaps, ViTMaps, set_token_pool
from anomaly_backbones.errors import UserError
from anomaly_backbones.pooling import Tail, last_stage


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _x(side, n=2):
    return torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(0))


# (registry name, input side): /16 at 64 px = 4x4; /14 with 4 registers at 56 px = 4x4; the
# ResNet-ViT hybrid (stride 32) at 64 px = 2x2
VITS = [("vit_small_patch16_224", 64), ("vit_small_patch14_reg4_dinov2", 56), ("vit_small_r26_s32_224", 64)]


@pytest.mark.parametrize("name,side", VITS)
def test_vit_maps_are_timms_forward_intermediates(name, side):
    bb = load_backbone(name, "random", seed=0)
    assert isinstance(bb.model, ViTMaps)
    layers = resolve_layers(name, "auto")
    x = _x(side)
    feats = FeatureExtractor(bb.model, layers)(x)
    idx = [int(layer.split(".")[1]) for layer in layers]
    want = bb.model.model.forward_intermediates(x, indices=idx, intermediates_only=True)   # timm's NCHW grid
    stride = bb.model.stride[0]
    for layer, w in zip(layers, want):
        assert feats[layer].shape == (2, bb.model.model.embed_dim, side // stride, side // stride)
        assert torch.equal(feats[layer], w), layer
    assert sum(v.shape[1] for v in feats.values()) == get_entry(name)["dim"]
    # prefix tokens really dropped: block 0's map is not the block's first h*w tokens
    tokens = bb.model.model.blocks[0](bb.model.embed(x))
    grid = FeatureExtractor(bb.model, ["blocks.0"])(x)["blocks.0"]
    prefix = bb.model.model.num_prefix_tokens
    assert prefix == (5 if "reg4" in name else 1)
    assert torch.equal(grid.flatten(2).transpose(1, 2), tokens[:, prefix:])


def test_pooled_vector_is_the_class_token_or_the_patch_mean():
    bb = load_backbone("vit_small_patch16_224", "random", seed=0)
    x = _x(64)
    normed = bb.model.model.forward_features(x)        # timm: blocks then the final norm
    assert last_stage(bb.model, resolve_layers(bb.name, "auto")) == "blocks.pool"
    pooled = FeatureExtractor(bb.model, ["blocks.pool"])(x)["blocks.pool"].mean(dim=(2, 3))
    torch.testing.assert_close(pooled, normed[:, 0], rtol=1e-6, atol=1e-6)          # registry default: cls
    set_token_pool(bb.model, "mean")
    pooled = FeatureExtractor(bb.model, ["blocks.pool"])(x)["blocks.pool"].mean(dim=(2, 3))
    torch.testing.assert_close(pooled, normed[:, 1:].mean(1), rtol=1e-5, atol=1e-6)
    with pytest.raises(UserError, match="token_pool"):
        set_token_pool(bb.model, "max")


def test_input_side_must_be_a_multiple_of_the_patch():
    bb = load_backbone("vit_small_patch14_reg4_dinov2", "random", seed=0)
    with pytest.raises(UserError, match=r"data.crop.*multiple of 14"):
        FeatureExtractor(bb.model, ["blocks.0"])(_x(64, 1))


def test_swin_stages_are_timms_forward_intermediates_and_tail_cuts_there():
    name = "swin_tiny_patch4_window7_224"
    bb = load_backbone(name, "random", seed=0)
    assert isinstance(bb.model, SwinMaps)
    layers = resolve_layers(name, "auto")
    x = _x(64)
    feats = FeatureExtractor(bb.model, layers)(x)
    want = bb.model.model.forward_intermediates(x, indices=[0, 1, 2], intermediates_only=True)
    for layer, w, side in zip(layers, want, (16, 8, 4)):
        assert feats[layer].shape[2:] == (side, side)
        assert torch.equal(feats[layer], w), layer
    # the pooled vector: timm's avg pool of the final normed map (its classifier's input)
    last = last_stage(bb.model, layers)
    pooled = FeatureExtractor(bb.model, [last])(x)[last].mean(dim=(2, 3))
    torch.testing.assert_close(pooled, bb.model.model.forward_head(bb.model.model.forward_features(x),
                                                                    pre_logits=True), rtol=1e-5, atol=1e-6)
    tail = Tail(bb.model, layers, last, name, 64, "eager")     # the rest of the network from the cached stage
    assert tail.inputs == ["layers.2"]


def test_engines_onnx_for_swin_eager_for_vit_with_the_reason():
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    bb = load_backbone("swin_tiny_patch4_window7_224", "random", seed=0)
    ext, engine = make_extractor(bb.model, ["layers.0", "layers.1"], bb.name, "onnx", 64, bb.mean, bb.std)
    assert engine == "onnx"    # OnnxExtractor.check compared it with eager PyTorch
    bb = load_backbone("vit_small_patch16_224", "random", seed=0)
    with pytest.raises(UserError, match="upsample_bicubic2d_aa"):   # timm's antialiased position-embedding resampling
        make_extractor(bb.model, ["blocks.2"], bb.name, "onnx", 64, bb.mean, bb.std)
    ext, engine = make_extractor(bb.model, ["blocks.2"], bb.name, "auto", 64, bb.mean, bb.std)
    assert engine == "eager" and ext.pixels(images)["blocks.2"].shape == (2, 384, 4, 4)


# ------------------------------------------------------------------ self-supervised inits offline

@pytest.mark.parametrize("name,init,needles", [
    ("vit_small_patch14_dinov2", "imagenet", ["models--timm--vit_small_patch14_dinov2.lvd142m",
                                              "dinov2_vits14_pretrain.pth"]),
    ("vit_small_patch16_224", "dino", ["models--timm--vit_small_patch16_224.dino", "dino_deitsmall16_pretrain.pth"]),
    ("vit_base_patch16_clip_224", "openai", ["models--timm--vit_base_patch16_clip_224.openai"]),
    ("resnet50", "fb_ssl_yfcc100m_ft_in1k", ["semi_supervised_resnet50-08389792.pth", "dl.fbaipublicfiles.com"]),
    ("resnext50_32x4d", "fb_swsl_ig1b_ft_in1k", ["semi_weakly_supervised_resnext50_32x4-72679e44.pth"]),
    ("resnet50", "mocov3", ["r-50-1000ep.pth.tar", "https://dl.fbaipublicfiles.com/moco-v3/r-50-1000ep/"]),
    ("vit_base_patch16_224", "mocov3", ["vit-b-300ep.pth.tar", "dl.fbaipublicfiles.com"]),
])
def test_self_supervised_inits_offline_are_one_line_naming_the_file(name, init, needles, monkeypatch, tmp_path):
    import huggingface_hub.constants as hc

    from anomaly_backbones.backbones import caches
    from anomaly_backbones.backbones.registry import pretraining

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(caches, "reachable", lambda host, port=443, timeout=caches.REACH_TIMEOUT_S: False)
    with pytest.raises(UserError) as e:
        load_backbone(name, init)
    msg = str(e.value)
    assert "\n" not in msg and "init=random" in msg and all(n in msg for n in needles), msg
    key = init if init != "imagenet" else "lvd142m"
    assert pretraining(name, key) in ("self-supervised", "semi-supervised", "semi-weakly-supervised")
    assert pretraining("vit_small_patch16_224", "augreg_in21k_ft_in1k") == "supervised"
    assert pretraining("vit_small_patch16_224", "random") is None


def test_report_init_column_says_how_the_weights_were_pretrained():
    from anomaly_backbones.report.fmt import init_label

    assert init_label("imagenet:dino", "vit_small_patch16_224") == "self-supervised (dino)"
    assert init_label("imagenet:lvd142m", "vit_small_patch14_dinov2") == "self-supervised (lvd142m)"
    assert init_label("imagenet:in1k_pypi", "tf_efficientnet_lite0") == "supervised (in1k_pypi)"
    assert init_label("imagenet:fb_swsl_ig1b_ft_in1k", "resnet50") == "semi-weakly-supervised (fb_swsl_ig1b_ft_in1k)"
    assert init_label("imagenet:mocov3", "vit_small_patch16_224") == "self-supervised (mocov3)"
    assert init_label("random:seed=1024", "vit_small_patch14_dinov2") == "random"
    assert init_label("imagenet:x", "not_in_the_registry") == "imagenet (x)"
