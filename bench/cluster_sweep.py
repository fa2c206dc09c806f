"""The cluster sweep's wall time beside the one-machine sweep, and its per-experiment overhead.

    sudo-less root: python bench/cluster_sweep.py [--backbones resnet18,squeezenet1_1,mobilenet_v3_small]

Two copies of the tiny study of tests/test_cluster.py (the same baseline, committed and pushed), then
the same backbones (random init) swept in each:
  - `sweep --engine ray` on a three-node local Ray cluster (a head with no CPUs, two worker nodes with
    one CPU each), in a private network namespace (tests/test_cluster.py's Cluster);
  - `sweep -j 1` (DVC's local queue, one worker).
Prints both wall times, their ratio, and the per-experiment overhead of the cluster path: clone,
push (`dvc exp push --run-cache` + the ref check), the driver's publish (push HEAD, baseline outputs
and run-cache, `dvc exp pull`) and final `dvc exp pull`. The run itself includes `--pull` of the
run-cache. On a shared machine, quote the ratio of one invocation, not seconds from different minutes.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_cluster import CLI, ENV, Cluster, make_project  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", default="resnet18,squeezenet1_1,mobilenet_v3_small")
    a = ap.parse_args()
    n = len(a.backbones.split(","))
    base = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    (base / "one").mkdir()
    (base / "ray").mkdir()
    one, ray_repo = make_project(base / "one"), make_project(base / "ray")
    cluster = Cluster(base / "ray")
    try:
        t = time.perf_counter()
        r = subprocess.run(cluster.pre + CLI + ["sweep", "--backbones", a.backbones, "--init", "random", "--engine", "ray",
                           "--address", "127.0.0.1:6379"], cwd=ray_repo, env=ENV, capture_output=True, text=True)
        t_ray = time.perf_counter() - t
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        out_ray = r.stdout
    finally:
        cluster.stop()
    t = time.perf_counter()
    r = subprocess.run(CLI + ["sweep", "--backbones", a.backbones, "--init", "random", "-j", "1", "--poll", "1"],
                       cwd=one, env=ENV, capture_output=True, text=True)
    t_one = time.perf_counter() - t
    assert r.returncode == 0 and f"{n}/{n} done ({n} ok" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    rows = [ln for ln in out_ray.splitlines() if ln.startswith("  success")]
    per = {k: [float(x) for x in re.findall(rf"{k} ([\d.]+)s", "\n".join(rows))] for k in ("clone", "run", "push", "total")}
    drv = re.search(r"publish ([\d.]+)s .* experiments ([\d.]+)s, final exp pull ([\d.]+)s", out_ray)
    print(f"| {n} backbones, tiny study, random init | wall s |\n|---|---|")
    print(f"| `sweep -j 1` (DVC queue, this machine) | {t_one:.1f} |")
    print(f"| `sweep --engine ray` (head + 2 one-CPU workers) | {t_ray:.1f} |")
    print(f"| ratio ray / -j 1 | {t_ray / t_one:.2f} |\n")
    mean = {k: sum(v) / len(v) for k, v in per.items() if v}
    print("| per experiment (mean of %d) | s |\n|---|---|" % len(rows))
    for k in ("clone", "run", "push", "total"):
        print(f"| {k} | {mean.get(k, float('nan')):.1f} |")
    if drv:
        print(f"| driver: publish (once per sweep) | {float(drv.group(1)):.1f} |")
        print(f"| driver: final `dvc exp pull --no-cache` (once) | {float(drv.group(3)):.1f} |")
    print(f"\nfolder: {base}")


if __name__ == "__main__":
    main()
