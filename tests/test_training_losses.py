"""The training methods against their authors' published code, on the same network and batches.

The expected values were computed by running the authors' own functions (PANDA losses.py and
panda.py run_epoch; Mean-Shifted main.py contrastive_loss and run_epoch with --angular; Deep SVDD
deepSVDD_trainer.py init_center_c, train and get_radius; DOC distance_layer.py forward/backward
under a stub of caffe.Layer) in a scratch environment outside the project, on
tf_efficientnet_lite0 (init random, seed 1024) up to blocks.4, four 64 px images from
numpy.random.default_rng(22), batches of 2 in the order torch.randperm(4) seeded 1024 gives. The
inputs are regenerated here from the same seeds; only the authors' outputs are kept.
`delta_*`: the change of the trainable weights after one epoch (two optimizer steps): its norm,
its first four values and its dot product with linspace(-1, 1).

tests/refs/training_losses.py recomputes the loss-only values (PANDA's compactness, Mean-Shifted's
contrastive and angular losses) from the authors' functions restated with plain torch; a reader
runs it (`python tests/refs/training_losses.py`), and the last test here does.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anomaly_backbones.backbones import load_backbone
from anomaly_backbones.methods import get_method
from anomaly_backbones.methods.training.base import ImageSet
from anomaly_backbones.methods.training.doc import doc_compactness
from anomaly_backbones.methods.training.msc import mean_shifted_contrastive_loss, msc_loss
from anomaly_backbones.methods.training.panda import compactness_loss

LAYERS = ["blocks.1", "blocks.2", "blocks.4"]

AUTHORS = {
    "panda_early": {"epoch_loss": 0.13745345175266266, "delta_norm": 0.00020333784050308168,
                    "delta_first": [7.450580596923828e-09, -1.4901161193847656e-07, -4.470348358154297e-08,
                                    3.8743019104003906e-07], "delta_dot": 0.0011969758197665215},
    "panda_ewc": {"epoch_loss": 0.13746324554085732, "delta_norm": 0.00020240670710336417,
                  "delta_first": [7.450580596923828e-09, -1.4901161193847656e-07, -4.470348358154297e-08,
                                  3.8743019104003906e-07], "delta_dot": 0.0011900555109605193},
    "msc_step": {"epoch_loss": 1.1800267398357391, "delta_norm": 0.00041971338214352727,
                 "delta_first": [1.1175870895385742e-08, -1.7136335372924805e-07, 1.4156103134155273e-06,
                                 -7.897615432739258e-07], "delta_dot": -0.0016909153200685978},
    "svdd_one-class": {"batch_losses": [17.725608825683594, 29.939777374267578], "R": 0.0,
                       "c_sum": -6.447266578674316, "delta_norm": 0.10520292073488235,
                       "delta_first": [-0.00020010769367218018, -0.00019616633653640747, -0.0001989305019378662,
                                       0.0001382920891046524], "delta_dot": -0.43149083852767944},
    "svdd_soft-boundary": {"batch_losses": [177.25608825683594, 93.01214599609375], "R": 5.626893520355225,
                           "c_sum": -6.447266578674316, "delta_norm": 0.10520324856042862,
                           "delta_first": [-0.00020010769367218018, -0.00019616633653640747,
                                           -0.0001989305019378662, 0.0001382920891046524],
                           "delta_dot": -0.4315284192562103},
}
AUTHORS_COMPACTNESS = 1.8225055932998657      # PANDA CompactnessLoss
AUTHORS_MSC_CONTRASTIVE = 2.703528881072998   # Mean-Shifted contrastive_loss
AUTHORS_MSC_TOTAL = 6.304720878601074         # ... plus the angular centre loss
AUTHORS_DOC_COMPACTNESS = 1.1335053443908691  # DOC DistanceLayer.forward
AUTHORS_DOC_BACKWARD_ROW0 = [-0.02155360020697117, 0.032891951501369476, 0.02277671918272972,
                             -0.053204070776700974, 0.022818585857748985]   # DistanceLayer.backward


def loss_inputs():
    """The loss-only inputs, drawn in the scratch run's order."""
    rng = np.random.default_rng(11)
    f32 = lambda *shape: torch.from_numpy(rng.normal(size=shape).astype(np.float32))  # noqa: E731
    f, c = f32(8, 16), f32(16)
    z1, z2 = F.normalize(f32(8, 16), dim=-1), F.normalize(f32(8, 16), dim=-1)
    cc = F.normalize(f32(16), dim=-1)
    return f, c, z1, z2, cc, f32(6, 5)


def images():
    return np.random.default_rng(22).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)


def train_one_epoch(name: str, params: dict, patch=None):
    """Fit `name` for one epoch (two steps of 2 images); the weights' change as the scratch run."""
    torch.set_num_threads(1)
    bb = load_backbone("tf_efficientnet_lite0", "random", 1024)
    before = {n: p.detach().clone() for n, p in bb.model.named_parameters()}
    m = get_method(name)({"epochs": 1, "batch_size": 2, **params}, LAYERS, 1024, backbone=bb)
    if patch is not None:
        patch(m)
    m.fit(ImageSet(images()))
    d = torch.cat([(p.detach() - before[n]).flatten() for n, p in m.trunk.trainable()])
    return m, {"delta_norm": float(d.norm()), "delta_first": [float(v) for v in d[:4]],
               "delta_dot": float((d * torch.linspace(-1, 1, len(d))).sum())}


def assert_step(got: dict, want: dict):
    """The weights after the steps agree with the authors' to 1e-6 of the step's own size (the
    projection to 1e-5 of itself: Mean-Shifted's centre is averaged in another order, 6e-6)."""
    scale = want["delta_norm"]
    assert abs(got["delta_norm"] - want["delta_norm"]) <= 1e-6 * scale + 1e-12
    assert np.allclose(got["delta_first"], want["delta_first"], rtol=0, atol=1e-6 * scale + 1e-12)
    assert abs(got["delta_dot"] - want["delta_dot"]) <= 1e-5 * abs(want["delta_dot"])


def test_loss_functions_equal_the_authors():
    f, c, z1, z2, cc, x = loss_inputs()
    assert abs(float(compactness_loss(f, c)) - AUTHORS_COMPACTNESS) < 1e-6
    assert abs(float(mean_shifted_contrastive_loss(z1 - cc, z2 - cc)) - AUTHORS_MSC_CONTRASTIVE) < 1e-6
    assert abs(float(msc_loss(z1, z2, cc)) - AUTHORS_MSC_TOTAL) < 1e-6
    assert abs(float(doc_compactness(x)) - AUTHORS_DOC_COMPACTNESS) < 1e-6


def test_doc_gradient_is_the_true_gradient_not_the_authors_backward():
    """DOC's hand-written Caffe backward is not the gradient of its own forward: it is half the
    gradient minus each row's sum over features / 2n. We train with the true gradient (autograd),
    checked here against central differences; the authors' values follow from it by that rule."""
    *_, x = loss_inputs()
    x = x.double().requires_grad_()
    doc_compactness(x).backward()
    g = x.grad
    eps, numeric = 1e-6, torch.zeros_like(x)
    with torch.no_grad():
        for i in range(x.shape[0]):
            for j in range(x.shape[1]):
                e = torch.zeros_like(x)
                e[i, j] = eps
                numeric[i, j] = (doc_compactness(x + e) - doc_compactness(x - e)) / (2 * eps)
    assert torch.allclose(g, numeric, atol=1e-8)
    n = x.shape[0]
    authors = g / 2 - g.sum(1, keepdim=True) / (2 * n)
    assert np.allclose(authors[0].numpy(), AUTHORS_DOC_BACKWARD_ROW0, atol=1e-6)
    assert float((authors - g).abs().max()) > 0.05   # the difference is real, not rounding


@pytest.mark.parametrize("variant", ["early", "ewc"])
def test_panda_epoch_equals_the_authors_run_epoch(variant, tmp_path):
    params = {}
    if variant == "ewc":   # the scratch run's Fisher: |N(0, 1)| of every parameter, seed 7
        rng = np.random.default_rng(7)
        bb = load_backbone("tf_efficientnet_lite0", "random", 1024)
        fisher = {n: torch.from_numpy(np.abs(rng.normal(size=tuple(p.shape))).astype(np.float32))
                  for n, p in bb.model.named_parameters()}
        torch.save(fisher, tmp_path / "fisher.pth")
        params = {"variant": "ewc", "fisher": str(tmp_path / "fisher.pth")}
    m, got = train_one_epoch("panda", params)
    want = AUTHORS[f"panda_{variant}"]
    assert abs(m.losses[0] - want["epoch_loss"]) < 1e-6
    assert_step(got, want)


def test_msc_epoch_equals_the_authors_run_epoch():
    """The same two views as the scratch run (augmentation is random: the views are given)."""
    rng = np.random.default_rng(33)
    v1 = torch.from_numpy(rng.normal(size=(4, 3, 64, 64)).astype(np.float32))
    v2 = torch.from_numpy(rng.normal(size=(4, 3, 64, 64)).astype(np.float32))

    def given_views(m):
        o = torch.randperm(4, generator=torch.Generator().manual_seed(1024)).numpy()
        views = iter([v1[o[0:2]], v2[o[0:2]], v1[o[2:4]], v2[o[2:4]]])
        m.view = lambda _images: next(views)

    m, got = train_one_epoch("msc", {}, given_views)
    want = AUTHORS["msc_step"]
    assert abs(m.losses[0] - want["epoch_loss"]) < 1e-6
    assert_step(got, want)


@pytest.mark.parametrize("objective", ["one-class", "soft-boundary"])
def test_deep_svdd_epoch_equals_the_authors_train(objective):
    m, got = train_one_epoch("deep_svdd", {"objective": objective, "warm_up_epochs": 0})
    want = AUTHORS[f"svdd_{objective}"]
    assert abs(m.losses[0] - np.mean(want["batch_losses"])) < 1e-6 * max(1.0, abs(m.losses[0]))
    assert abs(float(m.R) - want["R"]) < 1e-6 * max(1.0, want["R"])
    assert abs(float(m.c.sum()) - want["c_sum"]) < 1e-5
    assert_step(got, want)


def test_the_kept_loss_values_are_what_their_script_recomputes():
    """tests/refs/training_losses.py: the authors' loss functions restated, on the same inputs."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent / "refs" / "training_losses.py"
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.count(" same") == 3, r.stdout + r.stderr
