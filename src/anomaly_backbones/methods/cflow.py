"""CFLOW-AD (Gudovskiy et al. 2022): conditional normalizing flows on cached layer maps.

Why: CFLOW is the study's density-estimation method; unlike the memory banks it learns a
likelihood of the normal features, so its sensitivity to the backbone can differ.

One flow per layer in `layers`. Each maps a feature vector ("fiber", C values at one
position) to a standard normal, conditioned on a 2D sinusoidal encoding of the position
(`condition_vector` dims). A flow is `coupling_blocks` blocks, each built like FrEIA's
AllInOneBlock as anomalib uses it (written here in plain torch, no FrEIA):
affine coupling of the second half of the channels, scale and shift from a 2-layer MLP
(Linear(d, 2d), ReLU, Linear(2d, 2*half)) of [first half, condition], coefficients
multiplied by 0.1 and the log-scale soft-clamped to clamp_alpha * tanh(.) (clamp 1.9);
then a learned global affine (softplus-activated scale, initialised to 1) and a fixed random
channel permutation (seeded).

Training (Adam, lr 2e-4) minimises -logsigmoid(log p(x) / C), as anomalib's Cflow. An epoch
visits the training images in a random order, `batch_size` at a time; per layer it draws a
random subset of that batch's fibers (all of them if `fibers_per_epoch` >= the layer's
fiber count), shuffles it and takes Adam steps on `fiber_batch_size` fibers.
Defaults, chosen for 2 CPU cores (the measurements behind them: docs/performance.md, "CFLOW-AD"):
an epoch uses at most `fibers_per_epoch` random fibers per layer, in Adam steps of
`fiber_batch_size`, for `epochs` epochs; one pass over every fiber of a realistic training set
per epoch would cost minutes on 2 cores, and more fibers or epochs than the defaults buy little.

Test: log p / C per position and layer; per layer p = exp(logp - max) (max over the whole
test set, so scores do not depend on the batch size), resized to the image size
(bilinear with align_corners=True, as the original CFLOW-AD code and anomalib do, unlike the
other methods' align_corners=False), summed over layers; the map is
max(sum) - sum. Image score = max of that map (anomalib's rule); the returned map is then
blurred with sigma 4 like every other method's (param `sigma`; the score is taken before
the blur).

Scale: the flow starts near the identity with a standard normal base, which fits features of
the scale pretrained networks give (channel std of a few units; lite0's largest is about 20) but
not a random-init network's (channel std up to 1e4): its log p / C spans thousands of nats, the
training budget does not bring it in, and exp(log p - max) underflows to 0 at every position but
one, so every image gets the same score (ROC-AUC 0.5, no error). `standardize: auto` (default)
therefore standardizes a layer's fibers with its training channels' mean and std (float64
accumulators over the training images, std floored at 1e-6) when its largest channel std exceeds
STANDARDIZE_ABOVE; pretrained features never do, so they keep anomalib's behaviour bit for bit.
`true` / `false` force it for every layer. The standardized layers are in `self.standardized`.

Device: the flows are initialised on the CPU from the seed (so both devices start from the same
weights) and moved to `self.device`; training batches, their conditions and the Adam steps run
there; the random choices (image order, fibres) come from a CPU generator as before, their
indices moved. Likelihoods, the score maps and the blur stay on the device; scores and maps
come back as host arrays. On the CPU every move is a no-op (the same bits as before devices).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..device import to_device
from ..errors import UserError
from ..resources import BASELINE_BYTES
from ..params.schema import Param
from .base import SIGMA, Method
from .common import blur, check_finite
from .memory import Shapes

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
EVAL_FIBERS = 65536  # fibers per forward pass at test time (no autograd)
STANDARDIZE_ABOVE = 100.0  # `standardize: auto`: largest training channel std beyond pretrained scale


def positional_encoding_2d(dim: int, height: int, width: int) -> torch.Tensor:
    """(dim, H, W) sin/cos encoding: first half of the channels encodes x, second half y."""
    if dim % 4 != 0:
        raise UserError(f"cflow.condition_vector must be a multiple of 4, got {dim}")
    half = dim // 2
    freq = torch.exp(torch.arange(0.0, half, 2) * -(math.log(1e4) / half))  # (half/2,)
    xs = torch.arange(float(width))[:, None] * freq  # (W, half/2)
    ys = torch.arange(float(height))[:, None] * freq  # (H, half/2)
    pe = torch.zeros(dim, height, width)
    pe[0:half:2] = torch.sin(xs).t()[:, None, :].expand(-1, height, -1)
    pe[1:half:2] = torch.cos(xs).t()[:, None, :].expand(-1, height, -1)
    pe[half::2] = torch.sin(ys).t()[:, :, None].expand(-1, -1, width)
    pe[half + 1::2] = torch.cos(ys).t()[:, :, None].expand(-1, -1, width)
    return pe


class CouplingBlock(nn.Module):
    """Conditional affine coupling + global affine + fixed permutation (AllInOneBlock-like)."""

    def __init__(self, dim: int, cond_dim: int, clamp: float, perm: torch.Tensor):
        super().__init__()
        self.d1, self.d2 = dim - dim // 2, dim // 2
        hidden_in = self.d1 + cond_dim
        self.subnet = nn.Sequential(nn.Linear(hidden_in, 2 * hidden_in), nn.ReLU(),
                                    nn.Linear(2 * hidden_in, 2 * self.d2))
        self.clamp = float(clamp)
        # softplus(beta=0.5) * 0.1 of this init is exactly 1 (FrEIA's SOFTPLUS global affine)
        self.global_scale = nn.Parameter(torch.full((dim,), 2.0 * math.log(math.exp(5.0) - 1.0)))
        self.global_offset = nn.Parameter(torch.zeros(dim))
        self.register_buffer("perm", perm.clone())
        self.register_buffer("inv_perm", torch.argsort(perm))

    def _coeffs(self, x1: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.subnet(torch.cat([x1, c], 1)) * 0.1
        return self.clamp * torch.tanh(a[:, :self.d2]), a[:, self.d2:]

    def _scale(self) -> torch.Tensor:
        return 0.1 * F.softplus(self.global_scale, beta=0.5)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x1, x2 = x[:, :self.d1], x[:, self.d1:]
        s, t = self._coeffs(x1, c)
        y = torch.cat([x1, x2 * torch.exp(s) + t], 1)
        scale = self._scale()
        y = (y * scale + self.global_offset)[:, self.perm]
        return y, s.sum(1) + torch.log(scale).sum()

    def inverse(self, y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        x = (y[:, self.inv_perm] - self.global_offset) / self._scale()
        x1, y2 = x[:, :self.d1], x[:, self.d1:]
        s, t = self._coeffs(x1, c)
        return torch.cat([x1, (y2 - t) * torch.exp(-s)], 1)


class ConditionalFlow(nn.Module):
    """A stack of CouplingBlocks; forward gives (z, log|det dz/dx|)."""

    def __init__(self, dim: int, cond_dim: int, blocks: int, clamp: float, generator: torch.Generator):
        super().__init__()
        self.dim = dim
        self.blocks = nn.ModuleList(
            CouplingBlock(dim, cond_dim, clamp, torch.randperm(dim, generator=generator)) for _ in range(blocks))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for b in self.blocks:
            x, ld = b(x, c)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        for b in reversed(self.blocks):
            z = b.inverse(z, c)
        return z

    def log_prob_per_dim(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """log p(x | c) / C under a standard normal base, as anomalib's get_logp / C."""
        z, logdet = self(x, c)
        logp = -self.dim * LOG_SQRT_2PI - 0.5 * (z * z).sum(1) + logdet
        return logp / self.dim


def _fibers(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B*H*W, C), rows image-major then row-major positions."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])



def _multiple_of_4(v) -> str | None:
    return None if v % 4 == 0 else "must be a positive multiple of 4"

class CFlow(Method):
    """Per-layer conditional normalizing flows; anomaly = low likelihood."""

    name = "cflow"
    RESOLVES_AUTO = ("standardize",)
    PARAMS = {
        "epochs": Param(4, int, low=1),
        "fibers_per_epoch": Param(131072, int, low=1),
        "fiber_batch_size": Param(256, int, low=1),
        "lr": Param(2e-4, float, low=0, low_open=True),
        "coupling_blocks": Param(8, int, low=1),
        "condition_vector": Param(128, int, low=4, check=_multiple_of_4),
        "clamp_alpha": Param(1.9, float, low=0, low_open=True),
        "batch_size": Param(32, int, low=1),
        "sigma": SIGMA,
        "standardize": Param("auto", bool, special=("auto",)),   # decided per layer at fit (module docstring)
    }

    def configure(self, p: dict) -> None:
        self.epochs, self.lr, self.coupling_blocks = p["epochs"], p["lr"], p["coupling_blocks"]
        self.condition_vector, self.fiber_batch_size = p["condition_vector"], p["fiber_batch_size"]
        self.fibers_per_epoch, self.clamp = p["fibers_per_epoch"], p["clamp_alpha"]
        self.batch_size, self.sigma, self.standardize = p["batch_size"], p["sigma"], p["standardize"]
        self.flows: dict[str, ConditionalFlow] = {}
        self.scaling: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> (mean, std), (1, C, 1, 1)
        self.losses: list[float] = []  # mean training loss per epoch (all layers)

    def _cond(self, h: int, w: int) -> torch.Tensor:
        return to_device(_fibers(positional_encoding_2d(self.condition_vector, h, w)[None]), self.device)  # (H*W, P)

    def _check(self, estimate: float, fs, what: str, fix: str) -> None:
        self.guard(estimate, f"CFLOW {what} on {fs.dir} ({len(fs)} images, layers {fs.shapes(self.layers)})", fix)

    def _channel_stats(self, train, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) of each channel of `name` over every training fiber: float64 sums read
        range by range (FeatureSet.groups), never the whole layer at once."""
        c = train.shape(name)[0]
        s, s2, count = np.zeros(c), np.zeros(c), 0
        for sl in train.groups(name):
            x = np.asarray(train.array(name)[sl], dtype=np.float64)
            s += x.sum((0, 2, 3))
            s2 += np.square(x).sum((0, 2, 3))
            count += x.shape[0] * x.shape[2] * x.shape[3]
        mean = s / count
        return mean, np.sqrt(np.maximum(s2 / count - mean ** 2, 0.0))

    @property
    def standardized(self) -> list[str]:
        """The layers whose fibers are standardized (set at fit)."""
        return list(self.scaling)

    def _set_scaling(self, train) -> None:
        """Choose the standardized layers (see the module docstring, "Scale")."""
        self.scaling = {}
        if self.standardize is False:
            return
        for name in self.layers:
            mean, std = self._channel_stats(train, name)
            if self.standardize is True or float(std.max()) > STANDARDIZE_ABOVE:
                as_t = lambda v: to_device(torch.from_numpy(v.astype(np.float32)).view(1, -1, 1, 1), self.device)
                self.scaling[name] = (as_t(mean), as_t(np.maximum(std, 1e-6)))

    def _scaled(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if name not in self.scaling:
            return x
        mean, std = self.scaling[name]
        return (x - mean) / std

    def fit(self, train) -> None:
        """Train one flow per layer on the cached training features (see module docstring)."""
        n = len(train)
        if n == 0:
            raise UserError("cflow: the training split has no images")
        self._check(self.fit_bytes(train.shapes(self.layers), train.itemsize), train, "fit",
                    "lower `cflow.batch_size` (training images read at once) or `cflow.fiber_batch_size` (fibers "
                    "per Adam step); `fibers_per_epoch` changes the number of steps, not their memory.")
        self._set_scaling(train)
        gen = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.flows = {name: ConditionalFlow(train.shape(name)[0], self.condition_vector,
                                                self.coupling_blocks, self.clamp, gen)
                          for name in self.layers}
        self.flows = {name: f.to(self.device) for name, f in self.flows.items()}
        params = [q for f in self.flows.values() for q in f.parameters()]
        opt = torch.optim.Adam(params, lr=self.lr)
        conds = {name: self._cond(*train.shape(name)[1:]) for name in self.layers}
        frac = {name: min(1.0, self.fibers_per_epoch / (n * train.shape(name)[1] * train.shape(name)[2]))
                for name in self.layers}
        self.losses = []
        for f in self.flows.values():
            f.train()
        bar = self.progress(self.epochs * n, f"training ({self.epochs} epochs)", "img")
        for _ in range(self.epochs):
            order = torch.randperm(n, generator=gen)
            total, count = 0.0, 0
            for b0 in range(0, n, self.batch_size):
                bar.update(min(self.batch_size, n - b0))
                idx = np.sort(order[b0:b0 + self.batch_size].numpy())
                for name in self.layers:
                    x = to_device(np.asarray(train.array(name)[idx], dtype=np.float32), self.device)
                    check_finite(x, "cflow training features")
                    e = _fibers(self._scaled(name, x))
                    pos = torch.arange(e.shape[0], device=self.device) % conds[name].shape[0]
                    take = max(1, int(round(frac[name] * e.shape[0])))
                    pick = to_device(torch.randperm(e.shape[0], generator=gen)[:take], self.device)
                    nb = max(1, take // self.fiber_batch_size)  # the remainder joins the last step
                    for i in range(nb):
                        sel = pick[i * self.fiber_batch_size:(i + 1) * self.fiber_batch_size if i < nb - 1 else take]
                        lp = self.flows[name].log_prob_per_dim(e[sel], conds[name][pos[sel]])
                        loss = -F.logsigmoid(lp).mean()
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                        step_loss = float(loss.detach())
                        if not math.isfinite(step_loss):
                            raise UserError(
                                f"CFLOW-AD training diverged (loss {step_loss}) on {train.meta.get('backbone', '?')} "
                                f"layer {name} ({train.dir}): lower `cflow.lr` or `cflow.clamp_alpha`.")
                        total += step_loss * len(sel)
                        count += len(sel)
            self.losses.append(total / max(1, count))
            bar.set_postfix(loss=f"{self.losses[-1]:.4f}")
        bar.close()
        for f in self.flows.values():
            f.eval()

    @torch.no_grad()
    def log_likelihoods(self, fs) -> dict[str, torch.Tensor]:
        """{layer: (N, H, W) log p / C} for every image of a FeatureSet.

        Written into arrays made once: small results kept per batch between large temporaries
        fragment glibc's heap (see SPADE.grid_scores)."""
        out = {name: torch.empty(len(fs), *fs.shape(name)[1:], device=self.device) for name in self.layers}
        bar = self.progress(len(fs), "log-likelihoods", "img")
        for sl, feats in fs.batches(self.layers, self.batch_size):
            bar.update(sl.stop - sl.start)
            for name in self.layers:
                x = to_device(feats[name], self.device)
                check_finite(x, "cflow test features")
                b, _, h, w = x.shape
                cond = self._cond(h, w).repeat(b, 1)
                e = _fibers(self._scaled(name, x))
                lp = out[name][sl].view(-1)
                for s in range(0, e.shape[0], EVAL_FIBERS):
                    lp[s:s + EVAL_FIBERS] = self.flows[name].log_prob_per_dim(e[s:s + EVAL_FIBERS],
                                                                               cond[s:s + EVAL_FIBERS])
        bar.close()
        return out

    def grid_scores(self, test) -> tuple[np.ndarray, torch.Tensor]:
        """((N,) image scores, (N, S, S) unblurred score maps at the image size): per layer
        p = exp(log p / C - its max over the test set), upsampled (align_corners=True) and summed;
        map = max(sum) - sum; an image's score is its map's maximum before the blur."""
        if not self.flows:
            raise RuntimeError("CFlow.predict before fit")
        size = test.image_size
        self._check(self.predict_bytes(test.shapes(self.layers), len(test), size, test.itemsize),
                    test, "predict", "lower `cflow.batch_size` (test images per batch); the anomaly maps of the "
                    "whole test set are a fixed part.")
        logp = self.log_likelihoods(test)
        total = None
        for name in self.layers:
            lp = logp.pop(name).double()
            prob = torch.exp(lp - lp.max()).float()
            up = F.interpolate(prob[:, None], size=(size, size), mode="bilinear", align_corners=True)[:, 0]
            total = up if total is None else total.add_(up)
        del lp, prob, up
        top = total.max()
        score_map = total.neg_().add_(top)  # max - total, in place: (N, S, S) arrays are the large ones here
        return score_map.flatten(1).max(1).values.double().cpu().numpy(), score_map

    def to_maps(self, grid: torch.Tensor, size: int) -> np.ndarray:
        """The score maps are at the image size already: only the blur (on their device), then
        to the host."""
        return blur(grid, self.sigma).cpu().numpy()

    # -- memory: peak estimates for the guards (bench/memory.py prints them against the peaks)
    def _flow_floats(self, c: int) -> tuple[int, int]:
        """(parameters, activations per fiber) of one layer's flow of c channels. Per block the
        subnet input (d1 + P), its hidden layer before and after ReLU (2 x 2(d1 + P)), the
        coefficients and the coupling's intermediates (~8 x d2), the output and its affine (4 c)."""
        d1, d2 = c - c // 2, c // 2
        hid = d1 + self.condition_vector
        params = hid * 2 * hid + 2 * hid + 2 * hid * 2 * d2 + 2 * d2 + 2 * c
        return self.coupling_blocks * params, self.coupling_blocks * (5 * hid + 8 * d2 + 4 * c)

    def _batch_bytes(self, shapes: Shapes, itemsize: int) -> float:
        """The largest layer's feature batch: its cached maps (mapped pages, a copy, a float32
        copy), its fibers, their position index and random order (int64)."""
        return self.batch_size * max(c * h * w * (8 + 2 * itemsize) + 16.0 * h * w for c, h, w in shapes.values())

    def fit_bytes(self, shapes: Shapes, itemsize: int = 4) -> float:
        """Peak RSS of fit: the flows with their gradients and Adam's two moments (4 x params),
        the positional encodings, one feature batch, and one step's activations kept for the
        backward pass plus their gradients (2 x fiber_batch_size x activations per fiber)."""
        shapes = {name: shapes[name] for name in self.layers}
        params = sum(self._flow_floats(c)[0] for c, _, _ in shapes.values())
        step = max(self._flow_floats(c)[1] for c, _, _ in shapes.values())
        cond = sum(h * w for _, h, w in shapes.values()) * self.condition_vector
        return (BASELINE_BYTES + 16.0 * params + 4.0 * cond + self._batch_bytes(shapes, itemsize)
                + 8.0 * self.fiber_batch_size * step)

    def predict_bytes(self, shapes: Shapes, n_test: int, image_size: int, itemsize: int = 4) -> float:
        """Peak RSS of predict: the flows; one test batch (all layers' maps, then per layer its
        fibers and repeated positional encodings) and one forward pass of EVAL_FIBERS fibers;
        the log-likelihoods of all test images (then one layer's in float64); then the maps: the
        summed map, one layer's upsampled map, the output, a chunk's blur temporaries and the heap
        glibc keeps between them (six maps' worth), and the finiteness mask."""
        shapes = {name: shapes[name] for name in self.layers}
        params = sum(self._flow_floats(c)[0] for c, _, _ in shapes.values())
        b = min(self.batch_size, n_test)
        cached = sum(c * h * w for c, h, w in shapes.values())
        batch = b * (cached * (4 + itemsize) + 4.0 * max((c + self.condition_vector) * h * w
                                                        for c, h, w in shapes.values()))
        forward = 4.0 * min(EVAL_FIBERS, b * max(h * w for _, h, w in shapes.values())) * max(
            self._flow_floats(c)[1] // self.coupling_blocks for c, _, _ in shapes.values())
        grids = 4.0 * n_test * sum(h * w for _, h, w in shapes.values()) + 12.0 * n_test * max(
            h * w for _, h, w in shapes.values())
        maps = n_test * image_size ** 2 * (4.0 * 6 + 1)
        return BASELINE_BYTES + 4.0 * params + grids + max(batch + forward, maps)
