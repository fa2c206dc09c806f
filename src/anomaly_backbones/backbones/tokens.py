"""Transformers read like convnets: their token sequences as (B, C, h, w) maps on the patch grid.

    model = token_maps(timm_model, entry)     # what load_backbone returns for a transformer entry

A plain ViT (timm VisionTransformer: ViT, DeiT, DINO, DINOv2, CLIP towers, the ResNet-ViT hybrids)
passes (B, P + N, C) tokens from block to block: P prefix tokens (the class token, DINOv2's
register tokens) and N = h * w patch tokens in row-major order of the patch grid. `ViTMaps` runs
the model's own modules in timm's order (patch_embed, _pos_embed, patch_drop, norm_pre, blocks)
and after block i calls `blocks.i`, a parameter-free `TokenGrid` that drops the P prefix tokens
and reshapes the patch tokens to (B, C, h, w): the layer `blocks.i` is block i's output on the
grid, the same tensor as timm's `forward_intermediates(indices=[i])` (tests/test_tokens.py). The
timm model is owned by the fx leaf `embed` and keeps its names under `embed.model.`
(`embed.model.blocks.3`: 3-D tokens, refused as a layer); `ViTMaps.model` is the timm model.

The grid is the input side over the patch (over the total stride for a hybrid): 224 px -> 14 x 14
for /16, 16 x 16 for /14. The position embedding is resampled to the grid (timm's
dynamic_img_size, set by the registry's `kwargs`): DINOv2 is built for 518 px (37 x 37) and
runs at any multiple of 14. A side that is not a multiple of the patch is a UserError (timm
would silently drop the last partial row and column of patches).

`blocks.pool` is the image-level vector as a map, for the pooled cache's global average pool
(pooling.last_stage picks it as the last stage): `cls` = the class token after the final norm,
at every grid position (so its average is the class token itself), `mean` = the patch tokens after
the final norm (their average is the mean patch token). `token_pool` chooses; the registry's
`pool` is the published choice (class token for ViTs, which classify from it).

Swin (timm SwinTransformer) is hierarchical: its stages `layers.0-3` output (B, H, W, C)
channels-last maps. `SwinMaps` permutes each to (B, C, H, W) in `layers.i`, and the next stage
reads it back from there, so the cut after a cached stage is a plain chain (pooling.Tail). Its
pooled vector is the mean of the final normed map (timm's avg pool), `layers.pool`.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError

POOLS = ("cls", "mean")


def _tracing() -> bool:
    return torch.fx._symbolic_trace.is_fx_tracing() or torch.jit.is_tracing()


def _check_side(x: torch.Tensor, stride: tuple[int, int], name: str) -> None:
    if _tracing():
        return
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if h % stride[0] or w % stride[1]:
        raise UserError(f"{name} reads {stride[0]} x {stride[1]} px patches, but the input is {h} x {w} px: set "
                        f"`data.crop` to a multiple of {stride[0]} (e.g. {max(1, round(h / stride[0])) * stride[0]}).")


class TokenGrid(nn.Module):
    """(B, P + h*w, C) tokens -> (B, C, h, w): the patch tokens on their grid, prefix tokens dropped."""

    def __init__(self, prefix: int):
        super().__init__()
        self.prefix = prefix

    def forward(self, tokens: torch.Tensor, h, w) -> torch.Tensor:
        patches = tokens[:, self.prefix:]
        return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], h, w)


class ImageTokens(nn.Module):
    """The final normed tokens -> a (B, C, h, w) map whose average over the grid is the image vector."""

    def __init__(self, prefix: int, has_class_token: bool, mode: str):
        super().__init__()
        self.grid = TokenGrid(prefix)
        self.has_class_token = has_class_token
        self.mode = mode

    def forward(self, tokens: torch.Tensor, h, w) -> torch.Tensor:
        if self.mode == "mean":
            return self.grid(tokens, h, w)
        if not self.has_class_token:
            raise UserError("`extract.token_pool` is cls, but this transformer has no class token. Fix: "
                            "-S extract.token_pool=mean")
        cls = tokens[:, 0]
        return cls[:, :, None, None].expand(cls.shape[0], cls.shape[1], h, w)


class _Leaf(nn.Module):
    """Calls `fn(self.model, x)`. Registered as a timm fx leaf, so the trunk's fx graph
    (ort_extractor.trunk) keeps the call whole: timm's position-embedding resampling and Swin's
    window masks branch on shapes, which symbolic tracing cannot follow; the ONNX export traces
    it with concrete shapes."""

    def __init__(self, model: nn.Module, fn):
        super().__init__()
        self.model, self._fn = model, fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fn(self.model, x)


def _embed(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm VisionTransformer: pixels -> (B, P + N, C) tokens before the first block."""
    return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))


def _call(stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return stage(x)


def _notrace(cls):
    from timm.layers import register_notrace_module

    return register_notrace_module(cls)


@_notrace
class Embed(_Leaf):
    pass


@_notrace
class Stage(_Leaf):
    pass


class ViTMaps(nn.Module):
    """A timm VisionTransformer whose layers `blocks.i` output (B, C, h, w) maps (module docstring)."""

    def __init__(self, model: nn.Module, pool: str, name: str = "vit"):
        super().__init__()
        if not getattr(model, "dynamic_img_size", False):
            raise RuntimeError(f"registry: {name} needs kwargs dynamic_img_size: true")
        self.name = name
        self.embed = Embed(model, _embed)     # owns the timm model (its parameters are `embed.model.*`)
        prefix = int(model.num_prefix_tokens)
        ratio = model.patch_embed.feat_ratio(as_scalar=False)
        self.stride = (int(ratio[0]), int(ratio[1]))
        self.blocks = nn.ModuleDict({str(i): TokenGrid(prefix) for i in range(len(model.blocks))})
        self.blocks["pool"] = ImageTokens(prefix, getattr(model, "cls_token", None) is not None, pool)

    @property
    def model(self) -> nn.Module:
        """The timm VisionTransformer."""
        return self.embed.model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_side(x, self.stride, self.name)
        h, w = x.shape[-2] // self.stride[0], x.shape[-1] // self.stride[1]
        m = self.model
        t = self.embed(x)
        for i, block in enumerate(m.blocks):
            t = block(t)
            self.blocks[str(i)](t, h, w)    # the map, for the hooks (FeatureExtractor) and fx (the trunk)
        return self.blocks["pool"](m.norm(t), h, w)


class ChannelsFirst(nn.Module):
    """(B, H, W, C) -> (B, C, H, W)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)


class SwinMaps(nn.Module):
    """A timm SwinTransformer whose stages `layers.i` output (B, C, H, W) maps (module docstring)."""

    def __init__(self, model: nn.Module, name: str = "swin"):
        super().__init__()
        self.name = name
        self.patch_embed, self.norm, self.head = model.patch_embed, model.norm, model.head   # timm's, shared
        self._timm = [model]   # not registered: its modules are (patch_embed, stages.i.model, norm, head)
        self.stages = nn.ModuleList(Stage(stage, _call) for stage in model.layers)
        self.stride = (32, 32)   # the last stage's: every stage's grid is whole
        self.layers = nn.ModuleDict({str(i): ChannelsFirst() for i in range(len(model.layers))})
        self.layers["pool"] = ChannelsFirst()

    @property
    def model(self) -> nn.Module:
        """The timm SwinTransformer (its modules are this wrapper's)."""
        return self._timm[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_side(x, self.stride, self.name)
        t = self.patch_embed(x)
        for i, stage in enumerate(self.stages):
            t = self.layers[str(i)](stage(t)).permute(0, 2, 3, 1)   # the next stage reads the cached map
        return self.layers["pool"](self.norm(t))


def token_maps(model: nn.Module, entry: dict | None, name: str, pool: str | None = None) -> nn.Module:
    """The model as load_backbone returns it: wrapped where the registry entry says `tokens`
    (vit | swin), else unchanged. `pool`: cls | mean, None = the entry's `pool`."""
    kind = (entry or {}).get("tokens")
    if kind is None:
        return model
    pool = pool or entry.get("pool", "cls")
    if pool not in POOLS:
        raise UserError(f"`extract.token_pool` is {pool!r}; choose auto, {' or '.join(POOLS)}.")
    if kind == "vit":
        return ViTMaps(model, pool, name)
    if kind == "swin":
        return SwinMaps(model, name)
    raise RuntimeError(f"registry: {name} has unknown tokens kind {kind!r}")


def set_token_pool(model: nn.Module, pool: str) -> None:
    """`extract.token_pool` (auto | cls | mean) on a loaded backbone; auto keeps the registry's."""
    if pool == "auto" or not isinstance(model, ViTMaps):
        return
    if pool not in POOLS:
        raise UserError(f"`extract.token_pool` is {pool!r}; choose auto, {' or '.join(POOLS)}.")
    model.blocks["pool"].mode = pool
