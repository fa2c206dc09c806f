"""The image-level one-class methods on pooled features: OC-SVM against scikit-learn called
directly, SVDD against OC-SVM (RBF) and hand-computed minimum enclosing balls (linear), DN2
against a brute-force loop; params, errors, determinism, memory guards."""
from __future__ import annotations

import re

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM

import anomaly_backbones.resources as resources
from anomaly_backbones.errors import UserError
from anomaly_backbones.features import FeatureSet, FeatureWriter, PooledWriter
from anomaly_backbones.methods import get_method
from anomaly_backbones.methods.dn2 import DN2
from anomaly_backbones.methods.ocsvm import OCSVM
from anomaly_backbones.methods.pooled import LIBSVM_TOL
from anomaly_backbones.methods.svdd import SVDD, kernel, solve_dual
from anomaly_backbones.metrics import roc_auc
from anomaly_backbones.params import set_params
from anomaly_backbones.pipeline.config import load_params, resolve, validate

from conftest import CUDA, ROOT

LAST = "stage4"


def pooled_cache(root, train: dict, test: dict, last: str | None = LAST):
    """A feature cache whose pooled vectors are the given (N, C) float32 arrays: each stored as
    a 1x1 map (its global average pool is itself), `last` recorded as the last stage."""
    w = FeatureWriter(root, {"backbone": "test", "init": "random", "layers": list(train), "image_size": 8,
                             "ms_per_image": 1.0})
    pooled = PooledWriter(root)
    for split, arrays in (("train", train), ("test", test)):
        maps = {k: np.asarray(v, np.float32)[:, :, None, None] for k, v in arrays.items()}
        n = next(iter(maps.values())).shape[0]
        w.open(split, n, {k: v.shape[1:] for k, v in maps.items()})
        w.write(split, maps)
        pooled.open(split, n, {k: v.shape[1] for k, v in maps.items()})
        pooled.write(split, maps)
    w.meta.update(pooled=pooled.close(), last_stage=last)
    w.close()
    return FeatureSet(root, "train"), FeatureSet(root, "test")


def blobs(seed=0, n_train=60, n_good=30, n_bad=30, dim=8):
    """Defect-free images from one Gaussian, defective ones shifted and wider; labels of the test set."""
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.5, 3.0, dim)   # features of different scales: standardization matters
    train = rng.normal(size=(n_train, dim)) * scale
    test = np.concatenate([rng.normal(size=(n_good, dim)), rng.normal(0.8, 1.6, size=(n_bad, dim))]) * scale
    return ({LAST: train.astype(np.float32)}, {LAST: test.astype(np.float32)},
            np.r_[np.zeros(n_good), np.ones(n_bad)].astype(int))


@pytest.fixture
def cache(tmp_path):
    train, test, labels = blobs()
    return (*pooled_cache(tmp_path, train, test), labels)


# -- OC-SVM ------------------------------------------------------------------------------------

@pytest.mark.parametrize("params", [{}, {"kernel": "linear", "nu": 0.3}, {"nu": 0.5, "gamma": 0.05}])
def test_ocsvm_scores_are_scikit_learns_on_the_standardized_matrix(cache, params):
    train, test, _ = cache
    m = OCSVM(params, ["x"])
    m.fit(train)
    scores, maps = m.predict(test)
    p = m.params
    x, z = train.pooled(LAST).astype(np.float64), test.pooled(LAST).astype(np.float64)
    sc = StandardScaler().fit(x)
    ref = OneClassSVM(kernel=p["kernel"], nu=p["nu"], gamma=p["gamma"], tol=LIBSVM_TOL).fit(sc.transform(x))
    assert maps is None and m.level == "image"
    assert np.array_equal(scores, -ref.decision_function(sc.transform(z)))


# -- SVDD --------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed,nu,gamma", [(0, 0.1, "scale"), (1, 0.05, "scale"), (2, 0.3, 0.02), (3, 0.6, "scale")])
def test_svdd_with_rbf_ranks_as_ocsvm_with_the_same_nu(tmp_path, seed, nu, gamma):
    """With k(x, x) = 1 the SVDD dual is OC-SVM's: the same ranking, so the same image ROC-AUC."""
    train, test, labels = blobs(seed, n_train=80, n_good=40, n_bad=40, dim=12)
    train, test = pooled_cache(tmp_path, train, test)
    svdd, ocsvm = SVDD({"nu": nu, "gamma": gamma}, ["x"]), OCSVM({"nu": nu, "gamma": gamma}, ["x"])
    for m in (svdd, ocsvm):
        m.fit(train)
    s, o = svdd.predict(test)[0], ocsvm.predict(test)[0]
    assert abs(roc_auc(labels, s) - roc_auc(labels, o)) <= 1e-6
    assert 0.6 < roc_auc(labels, s) < 1.0                       # a ranking with mistakes to get right
    assert np.array_equal(np.argsort(s, kind="stable"), np.argsort(o, kind="stable"))
    # the radius: training images outside the sphere are at most a fraction nu of them (nu's meaning)
    d = svdd.distances(svdd.scaler.transform(train.pooled(LAST).astype(np.float64)))
    assert (d > svdd.radius2 + 1e-6).mean() <= nu + 1e-9


@pytest.mark.parametrize("points,centre,radius2", [
    ([(0, 0), (4, 0), (1, 1), (2, 0.5), (3, -1)], (2, 0), 4.0),          # obtuse: the longest side's circle
    ([(0, 0), (2, 0), (1, 2), (1, 1), (1.2, 0.4)], (1, 0.75), 25 / 16),  # acute: the circumcircle
    ([(-1, -1), (1, -1), (1, 1), (-1, 1), (0, 0), (0.5, -0.2)], (0, 0), 2.0),
])
def test_svdd_linear_hard_margin_is_the_minimum_enclosing_ball(points, centre, radius2):
    x = np.array(points, float)
    a, aka, r2 = solve_dual(kernel(x, x, "linear", 1.0), 1.0 / len(x))   # C = 1: no point outside
    np.testing.assert_allclose(a @ x, centre, atol=1e-5)
    assert r2 == pytest.approx(radius2, rel=1e-5) and aka == pytest.approx(float((a @ x) @ (a @ x)), rel=1e-6)
    assert a.sum() == pytest.approx(1.0) and (a >= 0).all()
    d2 = ((x - a @ x) ** 2).sum(1)
    assert (d2 <= radius2 + 1e-4).all() and np.allclose(d2[a > 1e-6], radius2, rtol=1e-4)   # SVs on the sphere


def test_svdd_soft_margin_meets_the_kkt_conditions():
    """C < 1, linear kernel: a_i = 0 inside the sphere, 0 < a_i < C on it, a_i = C outside."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(40, 3)) * [1.0, 2.0, 0.5]
    nu = 0.2
    c = 1.0 / (nu * len(x))
    a, _, r2 = solve_dual(kernel(x, x, "linear", 1.0), nu)
    d2 = ((x - a @ x) ** 2).sum(1)
    tol = 1e-4 * r2
    assert np.all(a <= c + 1e-12) and a.sum() == pytest.approx(1.0)
    assert np.all(d2[a < 1e-9] <= r2 + tol)
    free = (a > 1e-9) & (a < c - 1e-9)
    assert free.any() and np.allclose(d2[free], r2, atol=tol)
    assert np.all(d2[a >= c - 1e-9] >= r2 - tol)


def test_svdd_method_linear_centre_in_standardized_space(tmp_path):
    """Through the method: vectors already zero-mean unit-variance, C = 1: the enclosing ball of
    the four corners (+-sqrt(2.5) on each axis) is centred at 0 with R^2 = 2.5."""
    r = np.sqrt(2.5)
    pts = np.array([(-r, 0), (r, 0), (0, r), (0, -r), (0, 0)], np.float32)
    train, test = pooled_cache(tmp_path, {LAST: pts}, {LAST: np.array([(0, 0), (3, 0)], np.float32)})
    m = SVDD({"kernel": "linear", "C": 1.0}, ["x"])
    m.fit(train)
    np.testing.assert_allclose(m.centre, 0, atol=1e-5)
    assert m.radius2 == pytest.approx(2.5, rel=1e-5)
    scores, _ = m.predict(test)
    np.testing.assert_allclose(scores, [0.0, 9.0], atol=1e-4)


# -- DN2 ---------------------------------------------------------------------------------------

def brute_force(queries, bank, k):
    out = []
    for q in queries:
        d = sorted(sum((qi - bi) ** 2 for qi, bi in zip(q, b)) for b in bank)
        out.append(sum(d[:k]))
    return np.array(out)


@pytest.mark.parametrize("k", [1, 2, 7])
def test_dn2_matches_a_brute_force_loop(cache, k, device):
    train, test, _ = cache
    m = DN2({"k": k}, ["x"], device=device)
    m.fit(train)
    scores, maps = m.predict(test)
    x, z = train.pooled(LAST).astype(np.float64), test.pooled(LAST).astype(np.float64)
    assert maps is None
    np.testing.assert_allclose(scores, brute_force(z, x, k), rtol=1e-10)
    # PANDA's knn_score (faiss IndexFlatL2: squared distances, summed) through scikit-learn's exact search
    dist, _ = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(x).kneighbors(z)
    np.testing.assert_allclose(scores, (dist ** 2).sum(1), rtol=1e-9)


@pytest.mark.parametrize("device", CUDA, indirect=True)
def test_dn2_on_the_device_agrees_with_the_cpu(cache, device):
    """float64 on both; the GPU sums in another order, so close (1e-12), not bit for bit."""
    train, test, labels = cache
    out = []
    for dev in ("cpu", device):
        m = DN2({"k": 2}, ["x"], device=dev)
        m.fit(train)
        out.append(m.predict(test)[0])
    np.testing.assert_allclose(out[1], out[0], rtol=1e-12)
    assert out[1].dtype == np.float64 and roc_auc(labels, out[1]) == roc_auc(labels, out[0])


def test_dn2_k_equal_to_the_training_set_and_duplicates(tmp_path):
    x = np.array([[0, 0], [0, 0], [3, 4]], np.float32)
    train, test = pooled_cache(tmp_path, {LAST: x}, {LAST: np.array([[0, 0], [3, 4]], np.float32)})
    m = DN2({"k": 3}, ["x"])
    m.fit(train)
    np.testing.assert_allclose(m.predict(test)[0], [25.0, 50.0])


# -- pooled layers, params, errors, determinism --------------------------------------------------

def test_layers_pick_and_concatenate_pooled_layers(tmp_path):
    rng = np.random.default_rng(1)
    tr = {"a": rng.normal(size=(6, 3)), LAST: rng.normal(size=(6, 5))}
    te = {"a": rng.normal(size=(4, 3)), LAST: rng.normal(size=(4, 5))}
    train, test = pooled_cache(tmp_path, tr, te)
    m = DN2({"k": 1, "layers": ["a", LAST]}, ["x"])
    m.fit(train)
    both = np.concatenate([tr["a"], tr[LAST]], 1).astype(np.float32).astype(np.float64)
    assert m.layers == ["a", LAST] and np.array_equal(m.bank, both)
    m = DN2({"k": 1}, ["x"])
    m.fit(train)
    assert m.layers == [LAST] and m.bank.shape == (6, 5)   # auto: the last stage


@pytest.mark.parametrize("name,params,needle", [
    ("ocsvm", {"layers": ["blocks.9"]}, "`ocsvm.layers` names ['blocks.9']"),
    ("dn2", {"k": 61}, "`dn2.k` = 61 is larger than the training set"),
    ("svdd", {"C": 0.01}, "`svdd.C` = 0.01 is below 1/n"),
])
def test_bad_params_found_at_fit_are_one_line_naming_the_param(cache, name, params, needle):
    train, _, _ = cache
    with pytest.raises(UserError) as e:
        get_method(name)(params, ["x"]).fit(train)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_auto_layers_without_a_pooled_last_stage_say_what_to_do(tmp_path):
    train, _ = pooled_cache(tmp_path, {"a": np.ones((3, 2))}, {"a": np.ones((2, 2))}, last=None)
    with pytest.raises(UserError, match=r"`svdd.layers` is auto .* no pooled last stage .*\['a'\]"):
        SVDD({}, ["x"]).fit(train)


@pytest.mark.parametrize("change,needle", [
    ({"ocsvm.nu": 0}, "`ocsvm.nu` must be a number in (0, 1], not 0"),
    ({"svdd.nu": 1.5}, "`svdd.nu` must be a number in (0, 1], not 1.5"),
    ({"ocsvm.kernel": "poly"}, "`ocsvm.kernel` must be rbf | linear, not 'poly'"),
    ({"svdd.kernel": "sigmoid"}, "`svdd.kernel` must be rbf | linear"),
    ({"svdd.gamma": "auto"}, "`svdd.gamma` must be scale or a number > 0, not 'auto'"),
    ({"ocsvm.gamma": 0}, "`ocsvm.gamma` must be scale or a number > 0"),
    ({"svdd.C": 0}, "`svdd.C` must be auto or a number > 0"),
    ({"dn2.k": 0}, "`dn2.k` must be an integer >= 1"),
    ({"dn2.layers": ["a", "a"]}, "`dn2.layers` lists a layer more than once"),
])
def test_bad_params_are_one_line_naming_the_param(tmp_path, change, needle):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    set_params(tmp_path / "params.yaml", **change)
    with pytest.raises(UserError) as e:
        load_params(tmp_path / "params.yaml")
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["ocsvm", "svdd", "dn2"])
def test_they_read_no_layer_map_and_give_no_anomaly_map(cache, name):
    """With every layer-map file of the cache deleted (only the pooled vectors left) each fits and
    scores, gives no map (its pixel metrics are "not applicable"), and the extract stage caches no
    layer for it (resolve's cache_layers stay the top-level layers)."""
    train, test, labels = cache
    for f in train.dir.rglob("*.npy"):
        if "pooled" not in f.parts:
            f.unlink()
    m = get_method(name)({}, ["x"])
    m.fit(train)
    scores, maps = m.predict(test)
    assert maps is None and scores.shape == (len(labels),)
    assert roc_auc_score(labels, scores) > 0.7           # the shifted blobs are found (chance: 0.5)
    p = validate({"methods": [name]})
    assert resolve(p)["cache_layers"] == resolve(p)["layers"]


@pytest.mark.parametrize("name,step", [("ocsvm", "fit"), ("svdd", "fit"), ("svdd", "predict"), ("dn2", "predict")])
def test_memory_guard_stops_the_step(cache, monkeypatch, name, step):
    train, test, _ = cache
    m = get_method(name)({}, ["x"])
    if step == "predict":
        m.fit(train)
    monkeypatch.setattr(resources, "available_bytes", lambda: 1000)
    with pytest.raises(UserError, match=re.escape("GiB is available")) as e:
        m.fit(train) if step == "fit" else m.predict(test)
    assert str(train.dir) in str(e.value)


def test_memory_estimates_grow_with_what_they_hold():
    svdd, ocsvm, dn2 = SVDD({}, ["x"]), OCSVM({}, ["x"]), DN2({}, ["x"])
    assert svdd.fit_bytes(2000, 320) > svdd.fit_bytes(1000, 320) > svdd.fit_bytes(1000, 32)
    assert svdd.fit_bytes(4000, 320) - svdd.fit_bytes(2000, 320) > 3 * 8.0 * 2000 ** 2   # the n x n kernel
    assert ocsvm.fit_bytes(1000, 320) > ocsvm.fit_bytes(1000, 32)
    assert dn2.predict_bytes(500, 1000, 320) > dn2.predict_bytes(100, 1000, 320)
