"""OC-SVM (Schölkopf et al. 2001, "Estimating the support of a high-dimensional distribution") on
globally average-pooled backbone features: the classical one-class baseline the study sets
beside embedding comparison. Image-level: one score per image, no anomaly map.

Features: the pooled `layers` (methods/pooled.py; auto = the backbone's last stage), scaled to
zero mean and unit variance on the training set. Solver: scikit-learn's OneClassSVM (libsvm),
with its defaults besides the params below and a tighter stopping tolerance (LIBSVM_TOL,
methods/pooled.py). Score: minus the decision function (higher = more
anomalous; the boundary is 0).

Device: the CPU whatever `device` says: libsvm (scikit-learn) has no GPU solver, and on a few
hundred pooled vectors per category the solve takes milliseconds.

Params (params["ocsvm"], defaults in OCSVM.PARAMS): kernel (rbf | linear),
nu (0.1: an upper bound on the fraction of training images outside the boundary and a lower
bound on the fraction of support vectors), gamma (RBF width: `scale` = 1 / (dim * variance of
the standardized training vectors), scikit-learn's default, or a number).
"""
from __future__ import annotations

import numpy as np

from ..resources import BASELINE_BYTES
from .memory import LIBSVM_CACHE_MB, pooled_bytes
from .pooled import GAMMA, KERNEL, LIBSVM_TOL, NU, POOLED_LAYERS, PooledMethod


class OCSVM(PooledMethod):
    """One-class SVM on pooled features, standardized on the training set."""

    name = "ocsvm"
    PARAMS = {"layers": POOLED_LAYERS, "kernel": KERNEL, "nu": NU, "gamma": GAMMA}

    def configure(self, p: dict) -> None:
        self.kernel, self.nu, self.gamma = p["kernel"], p["nu"], p["gamma"]
        self.scaler = self.svm = None
        import sklearn.svm  # noqa: F401 - here, not in fit (timed), nor at the top (every stage imports the registry)

    def fit(self, train) -> None:
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import OneClassSVM

        x = self.vectors(train)
        self.guard(self.fit_bytes(*x.shape), f"OC-SVM fit on {train.dir} ({x.shape[0]} images x {x.shape[1]} dims)",
                   "pool fewer channels (`ocsvm.layers`).")
        self.scaler = StandardScaler().fit(x)
        self.svm = OneClassSVM(kernel=self.kernel, nu=self.nu, gamma=self.gamma, tol=LIBSVM_TOL,
                               cache_size=LIBSVM_CACHE_MB)
        self.svm.fit(self.scaler.transform(x))

    def grid_scores(self, test) -> tuple[np.ndarray, None]:
        """(N,) minus the decision function; no grid (image-level)."""
        if self.svm is None:
            raise RuntimeError("OCSVM.predict before fit")
        z = self.vectors(test)
        self.guard(self.predict_bytes(len(z), len(self.svm.support_), z.shape[1]),
                   f"OC-SVM predict on {test.dir} ({len(z)} images)", "pool fewer channels (`ocsvm.layers`).")
        return -self.svm.decision_function(self.scaler.transform(z)), None

    # -- memory: peak estimates for the guards (bench/memory.py prints them against the peaks)
    def fit_bytes(self, n: int, dim: int) -> float:
        """Peak RSS of fit: the training vectors and libsvm's kernel cache (float32 kernel rows,
        at most LIBSVM_CACHE_MB)."""
        return BASELINE_BYTES + pooled_bytes(n, dim) + min(4.0 * n * n, LIBSVM_CACHE_MB * 2**20)

    def predict_bytes(self, n_test: int, n_train: int, dim: int) -> float:
        """Peak RSS of predict: the test vectors and the support vectors (at most all training ones)."""
        return BASELINE_BYTES + pooled_bytes(n_test, dim) + 8.0 * n_train * dim
