"""PaDiM's Gaussian fit and scoring side by side with anomalib's, on the same embedding.

Both sides read one seeded (N, d, g, g) float32 embedding (the chosen channels of the layers,
already on the grid: what anomalib's PadimModel hands `MultiVariateGaussian`), so the comparison
is the Gaussian part alone: this project's PaDiM with `d=all` on a one-layer cache (its one pass,
no model held) against anomalib 2.7's `MultiVariateGaussian.fit` + `AnomalyMapGenerator.
compute_distance` (the covariance of every position, a regularized copy and the inverse held at
once). Each side runs in its own process; printed: time, peak RSS, and the largest relative
difference of the two sides' distances (anomalib adds 1e-5 to the diagonal beyond PaDiM's 0.01).

    python bench/peer_padim_memory.py --peer-python /tmp/peer/bin/python [--d 700] [--grid 28]
        [--n 391] [--n-test 167]

The defaults are regnet_y_32gf's d=700 at MVTec AD's largest category (391 training images,
167 test), on a 28x28 grid: the study's 56x56 grid needs anomalib about 4 x 5.7 GiB of
covariances and inverses (bench/padim_memory.py gives this project's figures there); the grid
is the knob that lets anomalib's side fit on a 24 GB machine shared with other work.
"""
import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PEER = r"""
import json, resource, sys, time
import numpy as np, torch
from anomalib.models.components import MultiVariateGaussian
from anomalib.models.image.padim.anomaly_map import AnomalyMapGenerator
cache, out = sys.argv[1], sys.argv[2]
t = time.perf_counter()
train = torch.from_numpy(np.load(f"{cache}/train/embedding.npy"))
mean, inv = MultiVariateGaussian().fit(train)
fit_s = time.perf_counter() - t
del train
t = time.perf_counter()
test = torch.from_numpy(np.load(f"{cache}/test/embedding.npy"))
dist = AnomalyMapGenerator.compute_distance(test, [mean, inv])[:, 0]
pred_s = time.perf_counter() - t
np.save(out, dist.numpy())
print(json.dumps({"fit_s": fit_s, "predict_s": pred_s,
                  "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""

OURS = r"""
import json, resource, sys, time
import numpy as np
from anomaly_backbones.features import FeatureSet
from anomaly_backbones.methods.padim import PaDiM
cache, out = sys.argv[1], sys.argv[2]
m = PaDiM({"d": "all"}, ["embedding"], seed=1024)
t = time.perf_counter()
m.fit(FeatureSet(cache, "train"))
_, dist = m.grid_scores(FeatureSet(cache, "test"))   # fit and scoring in one pass
np.save(out, dist)
print(json.dumps({"fit_s": None, "predict_s": time.perf_counter() - t,   # fit and predict are one pass
                  "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def run(python: str, code: str, cache: Path, out: Path, timeout: float) -> dict:
    """The side's JSON line; past `timeout` s the side is stopped and reported with the peak RSS it
    had reached (VmHWM) and no times."""
    p = subprocess.Popen([python, "-c", code, str(cache), str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    t, hwm = time.perf_counter(), 0.0
    while p.poll() is None and time.perf_counter() - t < timeout:
        status = Path(f"/proc/{p.pid}/status")
        lines = status.read_text().splitlines() if status.exists() else []
        hwm = max([hwm] + [int(x.split()[1]) / 2**20 for x in lines if x.startswith("VmHWM:")])
        time.sleep(1.0)
    if p.poll() is None:
        p.kill()
        p.wait()
        return {"timed_out": timeout, "peak_gib": hwm}
    stdout, stderr = p.communicate()
    if p.returncode:
        raise SystemExit(f"{python} failed:\n{stderr[-3000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def total(r: dict) -> float:
    """Fit + predict seconds of one side (ours fits and scores in one pass: its predict_s is both)."""
    return (r["fit_s"] or 0.0) + r["predict_s"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--peer-python", required=True, help="a python with anomalib 2.7 (never this project's venv)")
    ap.add_argument("--d", type=int, default=700)
    ap.add_argument("--grid", type=int, default=28)
    ap.add_argument("--n", type=int, default=391)
    ap.add_argument("--n-test", type=int, default=167)
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds a side may take (then: its peak so far)")
    a = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from padim_memory import fill

    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        fill(cache, a.n, a.n_test, "float32", {"embedding": (a.d, a.grid, a.grid)}, "regnet_y_32gf")
        ours = run(sys.executable, OURS, cache, Path(tmp) / "ours.npy", a.timeout)
        peer = run(a.peer_python, PEER, cache, Path(tmp) / "peer.npy", a.timeout)
        done = "timed_out" not in ours and "timed_out" not in peer
        x, y = (np.load(Path(tmp) / "ours.npy"), np.load(Path(tmp) / "peer.npy")) if done else (None, None)
    rel = float(np.max(np.abs(x - y)) / np.max(np.abs(y))) if done else None
    cov_gib = a.grid ** 2 * a.d ** 2 * 4 / 2**30
    print(f"embedding ({a.n} train / {a.n_test} test, d={a.d}, {a.grid}x{a.grid} grid); one (positions, d, d) "
          f"float32 array = {cov_gib:.2f} GiB")
    print("| side | fit s | predict s | fit + predict s | peak RSS GiB |")
    print("|---|---|---|---|---|")
    for name, r in (("this project (one pass)", ours), ("anomalib 2.7 MultiVariateGaussian", peer)):
        if "timed_out" in r:
            print(f"| {name} | stopped after {r['timed_out']:.0f} s | | | {r['peak_gib']:.2f} so far |")
        else:
            fit = "in the same pass" if r["fit_s"] is None else f"{r['fit_s']:.1f}"
            print(f"| {name} | {fit} | {r['predict_s']:.1f} | {total(r):.1f} | {r['peak_gib']:.2f} |")
    print(f"peak ratio (this project / anomalib): {ours['peak_gib'] / peer['peak_gib']:.2f}")
    if done:
        print(f"largest |difference| of the distances / largest distance: {rel:.2e}; time ratio: "
              f"{total(ours) / total(peer):.2f}")


if __name__ == "__main__":
    main()
