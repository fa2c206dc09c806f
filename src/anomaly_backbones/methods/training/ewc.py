"""Elastic weight consolidation for PANDA-EWC: the penalty and its diagonal Fisher information.

The authors load a diagonal Fisher computed on ImageNet for their ResNet (`--diag_path`). Here it
comes from `panda.fisher` (a torch file {parameter name: tensor of its shape}, names as in
model.named_parameters()), or, with `panda.fisher: none`, it is estimated on the category's
training images from the backbone's own pretrained classifier: per image, the squared gradient of
log p(y_hat | x) with y_hat the classifier's predicted class, averaged over the images. That is an
approximation of the ImageNet Fisher the authors used (other images; the model's labels, not
sampled ones). A backbone without a pretrained classifier (init=random, or no classifier head)
cannot give one: the stage stops with a message.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UserError


def ewc_penalty(named: list[tuple[str, torch.Tensor]], old: dict[str, torch.Tensor],
                fisher: dict[str, torch.Tensor], lam: float) -> torch.Tensor:
    """lambda * sum over parameters of sum(F * (theta* - theta)^2) / 2 (the authors' EWCLoss)."""
    total = 0
    for name, p in named:
        total = total + torch.sum(fisher[name] * (old[name] - p).pow(2)) / 2
    return lam * total


def check_fisher_source(value: str, backbone=None) -> None:
    """Before any work: the Fisher file exists, or (`none`) the backbone, once loaded, has a
    pretrained classifier to estimate it from."""
    if value != "none":
        if not Path(value).is_file():
            raise UserError(f"`panda.fisher` file {value!r} does not exist: give a torch file of {{parameter name: "
                            f"diagonal Fisher}} or `none` to estimate it from the backbone's classifier")
    elif backbone is not None and (not backbone.init.startswith(("imagenet:", "file:"))
                                   or _classifier(backbone.model) is None):
        raise UserError(f"panda.variant=ewc needs a diagonal Fisher: backbone {backbone.name} (init "
                        f"{backbone.init}) has no pretrained classifier to estimate it from; set `panda.fisher` "
                        f"to a file or use a pretrained init")


def _classifier(model: nn.Module) -> nn.Module | None:
    """The model's classification head (timm get_classifier, torchvision fc / classifier / heads)."""
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
    else:
        head = next((getattr(model, a) for a in ("fc", "classifier", "heads") if hasattr(model, a)), None)
    if head is None or isinstance(head, nn.Identity) or not any(True for _ in head.parameters()):
        return None
    return head


def load_or_estimate_fisher(method, train) -> dict[str, torch.Tensor]:
    """{name: diagonal Fisher} for every trainable parameter of method.trunk (see the module doc)."""
    named = method.trunk.trainable()
    path = method.params["fisher"]
    if path != "none":
        try:
            fisher = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
            raise UserError(f"`panda.fisher` file {path} cannot be read ({type(e).__name__}): save a dict "
                            f"{{parameter name: tensor}} with torch.save") from None
        if not isinstance(fisher, dict):
            raise UserError(f"`panda.fisher` file {path} holds a {type(fisher).__name__}, not a dict {{parameter name: tensor}}")
        for name, p in named:
            if name not in fisher or tuple(fisher[name].shape) != tuple(p.shape):
                raise UserError(f"`panda.fisher` file {path} has no tensor of shape {tuple(p.shape)} for parameter "
                                f"{name!r}: compute it for this backbone's parameters")
        return {name: fisher[name].float().to(p.device) for name, p in named}
    check_fisher_source(path, method.backbone)
    return estimate_fisher(method, train, named)


def estimate_fisher(method, train, named) -> dict[str, torch.Tensor]:
    """Mean over the training images of the squared gradient of log p(y_hat | x)."""
    model, prefix = method.backbone.model, method.trunk.prefix
    fisher = {name: torch.zeros_like(p) for name, p in named}
    params = [p for _, p in named]
    with method.progress(len(train), "Fisher (own predicted labels)", "img") as bar:
        for i in range(len(train)):
            idx = np.array([i])
            if prefix is not None and "train" in prefix.store:
                with prefix.feeding("train", torch.from_numpy(idx)), prefix.skipping():
                    logits = model(torch.zeros(1, 3, 1, 1, device=method.device))
            else:
                logits = model(method.inputs(train.images, idx))
            logp = F.log_softmax(logits, dim=1)
            grads = torch.autograd.grad(logp[0, int(logp.argmax(1))], params)
            for (name, _), g in zip(named, grads):
                fisher[name] += g.pow(2)
            bar.update(1)
    return {name: f / len(train) for name, f in fisher.items()}
