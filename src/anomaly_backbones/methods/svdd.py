"""SVDD (Tax & Duin 2004, "Support Vector Data Description"): the smallest hypersphere in kernel
space holding the training images, some allowed outside (C). Image-level: one score per image.

Features: as OC-SVM (methods/ocsvm.py): the pooled `layers`, standardized on the training set.
The dual, over the n training vectors:

    maximize  sum_i a_i k(x_i, x_i) - sum_ij a_i a_j k(x_i, x_j)   s.t.  0 <= a_i <= C,  sum_i a_i = 1

centre c = sum_i a_i phi(x_i); score = ||phi(z) - c||^2 = k(z, z) - 2 sum_i a_i k(x_i, z) + a'Ka.

Solver: libsvm's one-class SMO through scikit-learn (OneClassSVM, precomputed kernel), on
Q_ij = k_ij - (k_ii + k_jj) / 2. On the constraint sum a_i = 1, a'Qa = a'Ka - sum_i a_i k_ii, so
minimizing a'Qa (what libsvm's one-class solves, with sum a_i = nu n and a_i <= 1, i.e. our a
scaled by nu n, C = 1 / (nu n)) is the SVDD dual exactly, for any kernel; along every direction
the solver moves (sum zero) Q has K's curvature, so it is convex there. Q is divided by its
largest |k_ii| first (the solution does not change) so that the stopping tolerance is relative.
With the RBF kernel (k_ii = 1) Q = K - 1 and SVDD is OC-SVM with the same nu: the same ranking.

Params (params["svdd"]): kernel (rbf | linear), nu (0.1) with C = 1 / (nu n) for n training
images, or C given (a number >= 1 / n; then nu is unused; C >= 1 is the hard minimum enclosing
ball), gamma (as OC-SVM's).

Device: the CPU whatever `device` says, as OC-SVM (scikit-learn's libsvm has no GPU solver).
"""
from __future__ import annotations

import numpy as np

from ..errors import UserError
from ..resources import BASELINE_BYTES
from .memory import LIBSVM_CACHE_MB, pooled_bytes
from ..params.schema import Param
from .pooled import GAMMA, KERNEL, LIBSVM_TOL, NU, POOLED_LAYERS, PooledMethod


def kernel(x: np.ndarray, y: np.ndarray, kind: str, gamma: float) -> np.ndarray:
    """(n, m) float64 kernel matrix (scikit-learn's pairwise kernels)."""
    from sklearn.metrics.pairwise import linear_kernel, rbf_kernel

    return rbf_kernel(x, y, gamma=gamma) if kind == "rbf" else linear_kernel(x, y)


def scale_gamma(x: np.ndarray) -> float:
    """`gamma: scale`: 1 / (dim * variance of x), scikit-learn's rule for OneClassSVM."""
    var = float(x.var())
    return 1.0 / (x.shape[1] * var) if var > 0 else 1.0


def solve_dual(k: np.ndarray, nu: float) -> tuple[np.ndarray, float, float]:
    """The SVDD dual for the (n, n) kernel matrix k with C = 1 / (nu n): returns (a (n,), a'Ka,
    R^2), R^2 being the squared radius (the distance of the boundary's support vectors). k is
    used as the solver's matrix Q in place (see the module docstring)."""
    from sklearn.svm import OneClassSVM

    n = len(k)
    d = np.diag(k).copy()
    s = float(np.abs(d).max()) or 1.0
    k -= d[:, None] / 2
    k -= d[None, :] / 2
    k /= s
    svm = OneClassSVM(kernel="precomputed", nu=nu, tol=LIBSVM_TOL, cache_size=LIBSVM_CACHE_MB).fit(k)
    alpha = svm.dual_coef_[0]
    total = float(alpha.sum())
    a = np.zeros(n)
    a[svm.support_] = alpha / total
    # a'Ka = a'Qa + a.d where sum a = 1; libsvm's boundary, sum_i alpha_i Q_iz = rho, is the sphere
    aqa = float(a @ k @ a) * s
    return a, aqa + float(a @ d), aqa + 2.0 * s * float(svm.intercept_[0]) / total


class SVDD(PooledMethod):
    """Support vector data description on pooled features, standardized on the training set."""

    name = "svdd"
    PARAMS = {
        "layers": POOLED_LAYERS, "kernel": KERNEL, "nu": NU,
        "C": Param("auto", float, low=0, low_open=True, special=("auto",), help="auto: 1 / (nu n); else nu is unused"),
        "gamma": GAMMA,
    }
    RESOLVES_AUTO = ("layers", "C")   # C: from nu and the training images at fit (solver_nu)

    def configure(self, p: dict) -> None:
        self.kernel, self.nu, self.C, self.gamma_param = p["kernel"], p["nu"], p["C"], p["gamma"]
        self.scaler = self.sv = self.a = None
        import sklearn.metrics.pairwise, sklearn.svm  # noqa: F401, E401 - here, not in fit (timed)

    def solver_nu(self, n: int) -> float:
        """libsvm's nu for n training images: nu, or 1 / (C n) when C is given (C >= 1 / n)."""
        if self.C == "auto":
            return self.nu
        if self.C * n < 1.0:
            raise UserError(f"`svdd.C` = {self.C:g} is below 1/n = {1.0 / n:.3g} for the {n} training images (the "
                            f"weights a_i <= C cannot sum to 1); raise it or set `svdd.C: auto` (C = 1 / (nu n))")
        return min(1.0, 1.0 / (self.C * n))

    def k(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return kernel(x, y, self.kernel, self.gamma)

    def k_diag(self, x: np.ndarray) -> np.ndarray:
        """k(x_i, x_i) for each row."""
        return np.ones(len(x)) if self.kernel == "rbf" else np.einsum("ij,ij->i", x, x)

    def fit(self, train) -> None:
        from sklearn.preprocessing import StandardScaler

        x = self.vectors(train)
        n = len(x)
        nu = self.solver_nu(n)
        self.guard(self.fit_bytes(*x.shape), f"SVDD fit on {train.dir} ({n} images x {x.shape[1]} dims)",
                   "its (n, n) kernel matrix grows with the training images squared; fit fewer images.")
        self.scaler = StandardScaler().fit(x)
        x = self.scaler.transform(x)
        self.gamma = scale_gamma(x) if self.gamma_param == "scale" else self.gamma_param
        a, self.aka, self.radius2 = solve_dual(self.k(x, x), nu)
        keep = a > 0
        self.sv, self.a = x[keep], a[keep]
        self.centre = self.a @ self.sv if self.kernel == "linear" else None   # input space (linear kernel only)

    def distances(self, z: np.ndarray) -> np.ndarray:
        """(N,) squared kernel-space distances of standardized vectors z to the centre."""
        return self.k_diag(z) - 2.0 * self.k(z, self.sv) @ self.a + self.aka

    def grid_scores(self, test) -> tuple[np.ndarray, None]:
        """(N,) squared distances to the centre; no grid (image-level)."""
        if self.sv is None:
            raise RuntimeError("SVDD.predict before fit")
        z = self.vectors(test)
        self.guard(self.predict_bytes(len(z), len(self.sv), z.shape[1]), f"SVDD predict on {test.dir} ({len(z)} images)",
                   "pool fewer channels (`svdd.layers`).")
        return self.distances(self.scaler.transform(z)), None

    # -- memory: peak estimates for the guards (bench/memory.py prints them against the peaks)
    def fit_bytes(self, n: int, dim: int) -> float:
        """Peak RSS of fit: the training vectors, the (n, n) float64 kernel matrix (turned into
        the solver's matrix in place) with the distance matrix the RBF kernel is computed from,
        and libsvm's kernel cache."""
        return BASELINE_BYTES + pooled_bytes(n, dim) + 16.0 * n * n + min(4.0 * n * n, LIBSVM_CACHE_MB * 2**20)

    def predict_bytes(self, n_test: int, n_train: int, dim: int) -> float:
        """Peak RSS of predict: the test and support vectors, the (n_test, support) kernel and
        its distance matrix."""
        return BASELINE_BYTES + pooled_bytes(n_test, dim) + 8.0 * n_train * dim + 16.0 * n_test * n_train
