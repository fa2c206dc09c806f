"""The cluster sweep's pieces that need no cluster: names, the missing-extra errors, the dirty-tree
refusal, the stale-scratch cleaning, the first error line. The cluster itself: tests/test_cluster.py."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from anomaly_backbones.cluster import plan, worker
from anomaly_backbones.errors import UserError


def test_experiment_names_are_deterministic_and_valid_git_refs():
    p = {"backbone": "vit_base_patch16_224.augreg_in21k", "init": "random", "padim": {"d": 100}}
    n = plan.exp_name(p["backbone"], "random", p)
    assert n == plan.exp_name(p["backbone"], "random", dict(reversed(list(p.items()))))
    assert n != plan.exp_name(p["backbone"], "random", {**p, "padim": {"d": 50}})
    assert n.startswith("vit_base_patch16_224.augreg_in21k-random-") and len(n.rsplit("-", 1)[1]) == 8
    for init in ("random", "/ckpt/my model..v2.pt", "IMAGENET1K_V2"):
        ref = worker.exp_ref("ab" + "0" * 38, plan.exp_name("resnet18", init, p))
        assert subprocess.run(["git", "check-ref-format", ref]).returncode == 0, ref


@pytest.mark.parametrize("engine,extra", [("ray", "ray"), ("slurm", "submitit")])
def test_missing_extra_is_one_line_naming_it(engine, extra, monkeypatch):
    from anomaly_backbones.cluster import ray_engine, slurm_engine

    monkeypatch.setitem(sys.modules, extra, None)   # `import ray` raises ImportError
    with pytest.raises(UserError) as e:
        (ray_engine.import_ray if engine == "ray" else slurm_engine.import_submitit)()
    msg = str(e.value)
    assert "\n" not in msg and f".[{engine}]" in msg, msg


def test_dirty_tree_is_refused(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    with pytest.raises(UserError, match=r"uncommitted changes \(params.yaml\)"):
        plan.check_clean(tmp_path)
    subprocess.run(["git", "-C", str(tmp_path), "add", "."], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
                   check=True)
    plan.check_clean(tmp_path)


def test_stale_clones_of_dead_workers_are_removed(tmp_path):
    host = socket.gethostname()
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = tmp_path / f"{host}--{os.getpid()}--a--1"
    gone = tmp_path / f"{host}--{dead.pid}--b--2"
    other = tmp_path / f"another-host--{dead.pid}--c--3"
    for d in (live, gone, other):
        d.mkdir()
    assert worker.clean_stale(tmp_path) == [gone.name]
    assert live.exists() and other.exists() and not gone.exists()


def test_first_error_line():
    text = "Running stage 'extract':\n> python stages/03_extract.py\nerror: init 'x': no such checkpoint\n" \
           "ERROR: failed to reproduce 'extract': failed to run: python stages/03_extract.py, exited with 1\n"
    assert worker.first_error(text).startswith("error: init 'x'")
    assert worker.first_error("Traceback\n  File x\nValueError: bad\n") == "ValueError: bad"
