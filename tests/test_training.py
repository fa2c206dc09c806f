"""The methods that train the backbone: DN2 scoring, determinism, collapse, errors, the stage."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from anomaly_backbones.backbones import FeatureExtractor, load_backbone
from anomaly_backbones.data.prepare import read_samples
from anomaly_backbones.errors import UserError
from anomaly_backbones.methods import METHODS, get_method
from anomaly_backbones.methods.training.base import ImageSet
from anomaly_backbones.methods.knn import dn2_scores, knn_scores
from anomaly_backbones.params import set_params
from anomaly_backbones.pipeline.config import validate
from conftest import CUDA, ROOT

LAYERS = ["blocks.1", "blocks.2", "blocks.4"]
TRAINING = [n for n in METHODS if get_method(n).reads == "images"]


def images(n: int, seed: int, size: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def method(name: str, init: str = "random", device="cpu", **params):
    torch.set_num_threads(1)
    return get_method(name)({"batch_size": 4, **params}, LAYERS, 1024,
                            backbone=load_backbone("tf_efficientnet_lite0", init, 1024), device=device)


def brute_force_knn(train: np.ndarray, test: np.ndarray, k: int) -> np.ndarray:
    d = ((test[:, None, :].astype(np.float64) - train[None].astype(np.float64)) ** 2).sum(-1)
    return np.sort(d, axis=1)[:, :k].sum(1)


def test_knn_scores_equal_a_brute_force_search(monkeypatch):
    """The one k-NN (methods/knn.py, a GEMM per tile in float64) against the sum of squared
    differences of every pair, sorted (numpy); small tiles give the same values."""
    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(37, 9)).astype(np.float32), rng.normal(size=(23, 9)).astype(np.float32)
    import anomaly_backbones.methods.knn as knn

    whole = dn2_scores(train, test, 2)
    np.testing.assert_allclose(whole, brute_force_knn(train, test, 2), rtol=1e-12)
    np.testing.assert_allclose(knn_scores(train, test, 1, squared=False), np.sqrt(brute_force_knn(train, test, 1)),
                               rtol=1e-12)
    monkeypatch.setattr(knn, "CHUNK_ELEMS", 50)   # one query row per tile
    np.testing.assert_allclose(dn2_scores(train, test, 2), whole, rtol=1e-12)


@pytest.mark.parametrize("device", CUDA, indirect=True)
def test_knn_scores_on_the_device_agree_with_the_host(monkeypatch, device):
    rng = np.random.default_rng(1)
    train, test = rng.normal(size=(37, 9)).astype(np.float32), rng.normal(size=(23, 9)).astype(np.float32)
    import anomaly_backbones.methods.knn as knn

    monkeypatch.setattr(knn, "CHUNK_ELEMS", 50)
    for k, squared in ((2, True), (1, False), (5, True)):
        got = knn_scores(train, test, k, squared=squared, device=device)
        assert isinstance(got, np.ndarray) and got.dtype == np.float64
        np.testing.assert_allclose(got, knn_scores(train, test, k, squared=squared), rtol=1e-12)


@pytest.mark.parametrize("device", CUDA, indirect=True)
@pytest.mark.parametrize("name,params", [("panda", {}), ("deep_svdd", {"biases": "trained"}), ("msc", {})])
def test_training_on_the_device_agrees_with_the_cpu(name, params, device):
    """The same seeded batches, augmentations and initial weights on both devices; the GPU's
    convolutions round differently, so the losses and scores agree closely, not bit for bit."""
    from anomaly_backbones.metrics import roc_auc

    train, test = images(8, 3), images(6, 4)
    labels = np.r_[np.zeros(3), np.ones(3)].astype(int)
    out = []
    for dev in ("cpu", device):
        m = method(name, epochs=1, device=dev, **params)
        m.fit(ImageSet(train))
        assert next(m.trunk.model.parameters()).device == torch.device(dev)
        out.append((m.predict(ImageSet(test))[0], m.losses))
    (s_cpu, l_cpu), (s_dev, l_dev) = out
    np.testing.assert_allclose(l_dev, l_cpu, rtol=1e-3)
    np.testing.assert_allclose(s_dev, s_cpu, rtol=1e-3, atol=1e-6)
    assert abs(roc_auc(labels, s_dev) - roc_auc(labels, s_cpu)) <= 1e-3


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_panda_with_zero_epochs_is_dn2_on_the_extract_stage_features(prefix_cache):
    """0 epochs: the initial network's pooled features of the deepest layer, as the extract
    stage's FeatureExtractor computes them, scored by a brute-force 2-NN: the same bits."""
    train, test = images(10, 1), images(6, 2)
    m = method("panda", epochs=0, prefix_cache=prefix_cache)
    m.fit(ImageSet(train))
    scores, maps = m.predict(ImageSet(test))
    bb = load_backbone("tf_efficientnet_lite0", "random", 1024)
    ext = FeatureExtractor(bb.model, ["blocks.4"], bb.mean, bb.std)
    pooled = lambda x: np.concatenate([ext.pixels(x[s:s + 4])["blocks.4"].mean((2, 3)).numpy()  # noqa: E731
                                       for s in range(0, len(x), 4)])
    assert maps is None
    np.testing.assert_allclose(scores, brute_force_knn(pooled(train), pooled(test), 2), rtol=1e-10)


@pytest.mark.parametrize("name,params", [("panda", {}), ("msc", {}), ("deep_svdd", {"biases": "trained"})])
def test_same_params_give_the_same_scores_bit_for_bit(name, params):
    train, test = images(8, 3), images(4, 4)
    runs = []
    for _ in range(2):
        m = method(name, epochs=1, **params)
        m.fit(ImageSet(train))
        runs.append((m.predict(ImageSet(test))[0], m.losses))
    assert np.array_equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    m = method(name, epochs=1, **params)
    m.seed = 7   # another seed: another batch order (and, for msc and deep_svdd, other random draws)
    m.fit(ImageSet(train))
    assert not np.array_equal(m.predict(ImageSet(test))[0], runs[0][0]) and m.losses != runs[0][1]


def test_panda_ses_scores_are_the_max_of_mean_normalized_snapshot_scores():
    train, test = images(8, 5), images(5, 6)
    m = method("panda", epochs=2, variant="ses", ses_every=1)
    m.fit(ImageSet(train))
    assert len(m.snapshots) == 2
    got, _ = m.predict(ImageSet(test))
    per = []
    for snap in m.snapshots:
        with torch.no_grad():
            for n, p in m.trunk.trainable():
                p.copy_(snap[n])
        s = dn2_scores(m.features(ImageSet(train)), m.features(ImageSet(test)))
        per.append(s / s.mean())
    assert np.allclose(got, np.max(per, axis=0), rtol=1e-6)


def test_deep_svdd_collapse_is_detected_on_a_constant_input_with_biases():
    """Every training image the same: the network maps them all to one point, which the trained
    biases move toward c (the loss falls) while nothing tells images apart; an ordinary training
    set is not flagged."""
    constant = np.full((8, 64, 64, 3), 128, np.uint8)
    m = method("deep_svdd", epochs=2, biases="trained")
    m.fit(ImageSet(constant))
    assert m.collapsed and m.spread <= 1e-6 * float((m.c ** 2).sum()) and m.losses[1] < m.losses[0]
    m = method("deep_svdd", epochs=2)
    m.fit(ImageSet(images(8, 7)))
    assert not m.collapsed


def test_deep_svdd_frozen_biases_do_not_change():
    bb = load_backbone("tf_efficientnet_lite0", "random", 1024)
    before = {n: p.detach().clone() for n, p in bb.model.named_parameters()}
    m = get_method("deep_svdd")({"epochs": 1, "batch_size": 4, "lr": 1e-2}, LAYERS, 1024, backbone=bb)
    m.fit(ImageSet(images(8, 8)))
    changed = {n for n, p in bb.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(not n.endswith("bias") and ".bn" not in n and not n.startswith("bn") for n in changed)


def test_panda_ewc_estimates_the_fisher_only_from_a_pretrained_classifier():
    m = method("panda", init="imagenet", epochs=1, variant="ewc")
    m.fit(ImageSet(images(4, 9)))
    fisher, old = m.ewc
    assert set(fisher) == {n for n, _ in m.trunk.trainable()} and all(bool((f >= 0).all()) for f in fisher.values())
    assert any(float(f.sum()) > 0 for f in fisher.values())
    with pytest.raises(UserError, match="no pretrained classifier"):
        m = method("panda", epochs=1, variant="ewc")
        m.fit(ImageSet(images(4, 9)))
    assert not hasattr(m, "trunk")   # stopped before building the network


@pytest.mark.parametrize("name,params,needle", [
    ("doc", {}, "`doc.reference` is not set"),
    ("doc", {"reference": "/nonexistent/ref"}, "/nonexistent/ref"),
    ("panda", {"variant": "ewc", "fisher": "/nonexistent/f.pth"}, "/nonexistent/f.pth"),
    ("panda", {"frozen_through": "blocks.4"}, "nothing would train"),
    ("msc", {"frozen_through": "blocks.99"}, "blocks.99"),
])
def test_bad_inputs_are_one_line_before_training(name, params, needle):
    m = method(name, epochs=1, **params)
    with pytest.raises(UserError) as e:
        m.fit(ImageSet(images(4, 10)))
    assert needle in str(e.value) and "\n" not in str(e.value) and m.losses == []


def test_methods_and_train_methods_each_take_their_kind():
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert validate({**p, "train_methods": []})["train_methods"] == []
    with pytest.raises(UserError, match="panda trains the backbone: list it in `train_methods`"):
        validate({**p, "methods": ["padim", "panda"]})
    with pytest.raises(UserError, match="padim reads the feature cache: list it in `methods`"):
        validate({**p, "train_methods": ["padim"]})


def test_dvc_yaml_runs_one_train_stage_per_train_method_and_aggregates_them():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    train = stages["train"]
    assert train["foreach"] == "${train_methods}" and "data/prepared" in train["do"]["deps"]
    assert "data/features" not in train["do"]["deps"]      # a training method never waits for extract
    assert {"seed", "backbone", "init", "layers", "${item}"} <= set(train["do"]["params"])
    assert "train_methods" in stages["aggregate"]["params"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project folder with tiny prepared synthetic data (2 categories)."""
    root = tmp_path_factory.mktemp("train_stage")
    shutil.copy(ROOT / "params.yaml", root / "params.yaml")
    set_params(root / "params.yaml", **{"synthetic.categories": ["disc", "weave"], "synthetic.n_train": 6,
                                        "synthetic.n_good_test": 3, "synthetic.n_defect_test": 3,
                                        "data.resize": 73, "data.crop": 64, "init": "random",
                                        "train_methods": ["panda"], "panda.epochs": 2, "panda.batch_size": 4})
    for stage in ("01_generate.py", "02_prepare.py"):
        subprocess.run([sys.executable, str(ROOT / "stages" / stage)], cwd=root, check=True, capture_output=True)
    return root


def test_train_stage_writes_results_like_fit_and_the_training_curves(project):
    r = subprocess.run([sys.executable, str(ROOT / "stages" / "04_train.py"), "panda"], cwd=project,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((project / "outputs" / "panda" / "results.json").read_text())
    assert set(res["categories"]) == {"disc", "weave"} and res["peak_mb"] > 0
    for name, c in res["categories"].items():
        assert c["pixel_auroc"] is None and 0 <= c["image_auroc"] <= 1 and c["epochs"] == 2
        assert {"fit_s", "predict_ms_per_image", "backbone_ms_per_image", "roc"} <= set(c)
        scores = np.load(project / "outputs" / "panda" / f"{name}.npz")
        n_test = sum(s["split"] == "test" for s in read_samples(project / "data" / "prepared" / name))
        assert list(scores) == ["scores"] and scores["scores"].shape == (n_test,)
        rows = (project / "metrics" / "train" / "panda" / "plots" / "metrics" / name / "loss.tsv").read_text().split()
        assert rows[:2] == ["step", "loss"] and len(rows) == 6 and float(rows[3]) == pytest.approx(c["train_loss"][0])


def test_train_stage_stops_before_training_without_a_reference_set(project):
    work = project.parent / "noref"
    shutil.copytree(project, work, dirs_exist_ok=True)
    set_params(work / "params.yaml", **{"train_methods": ["doc"]})
    r = subprocess.run([sys.executable, str(ROOT / "stages" / "04_train.py"), "doc"], cwd=work,
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "doc.reference" in r.stderr
    assert not (work / "outputs" / "doc").exists()


def test_memory_guard_stops_before_training_naming_the_batch_size(monkeypatch):
    import anomaly_backbones.resources as resources

    monkeypatch.setattr(resources, "available_bytes", lambda: 2**30)
    m = method("deep_svdd", epochs=1)
    with pytest.raises(UserError, match=r"lower `deep_svdd.batch_size`") as e:
        m.fit(ImageSet(images(4, 11)))
    assert "4 images a step" in str(e.value) and m.losses == []


def test_memory_guard_sizes_the_batch_that_can_exist(monkeypatch):
    """40 images never make a batch of 200: the estimate for 40 images with batch_size 200 equals
    the one with batch_size 40 (the whole set in one batch); a smaller batch still costs less."""
    import anomaly_backbones.resources as resources

    monkeypatch.setattr(resources, "available_bytes", lambda: 2**40)
    est = {}
    for bs in (8, 40, 200):
        m = method("deep_svdd", epochs=1, batch_size=bs)
        m.fit(ImageSet(images(4, 11)))   # builds the trunk the estimate reads
        est[bs] = m.train_bytes(40, 64)
    assert est[200] == est[40] and est[8] < est[40]


@pytest.mark.parametrize("name,want", [("alexnet", "features.5"), ("vgg11", "features.9"),
                                       ("squeezenet1_1", "features.5"), ("resnet18", "layer2")])
def test_frozen_through_auto_for_every_registry_shape(name, want):
    """`auto` is PANDA's choice (the registry's second layer) and, for an entry with one default
    layer, the first half of that layer's children: never an error for a registry backbone."""
    from anomaly_backbones.backbones import load_backbone
    from anomaly_backbones.methods.training.trunk import resolve_frozen

    model = load_backbone(name, "random", 0).model
    children = [n for n, _ in dict(model.named_modules())[want.rpartition(".")[0] or want].named_children()]
    assert resolve_frozen("auto", name, "panda", model) == want
    if "." in want:   # the first half: the frozen child is the middle one of the layer's children
        assert children.index(want.rpartition(".")[2]) == len(children) // 2 - 1


def test_frozen_through_auto_without_registry_layers_is_one_line():
    from anomaly_backbones.methods.training.trunk import resolve_frozen

    with pytest.raises(UserError, match="panda.frozen_through"):
        resolve_frozen("auto", "not_in_the_registry", "panda")


def test_panda_on_a_vit_trains_without_the_prefix_cache_and_gives_the_same_bits():
    """A ViT's `blocks` never runs as one module (its maps wrapper runs block by block), so the
    frozen prefix cannot be skipped by module order: PANDA trains without the cache (before: a
    ValueError from the order lookup), and the cache setting changes nothing."""
    from anomaly_backbones.backbones import get_entry

    layers = get_entry("vit_small_patch16_224")["layers"]
    train, test = images(6, 1), images(4, 2)
    scores = []
    for prefix_cache in (True, False):
        torch.set_num_threads(1)
        m = get_method("panda")({"batch_size": 4, "epochs": 1, "prefix_cache": prefix_cache}, layers, 1024,
                                backbone=load_backbone("vit_small_patch16_224", "random", 1024))
        m.fit(ImageSet(train))
        assert m.trunk.prefix is None
        scores.append(m.predict(ImageSet(test))[0])
    assert np.isfinite(scores[0]).all() and np.array_equal(scores[0], scores[1])
