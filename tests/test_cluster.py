"""`sweep --engine ray` on a real three-node Ray cluster (slow: 19 min here under a load average of 15-22 from
other work on 2 cores; the baseline `dvc repro` and six experiment runs dominate), and
`--engine slurm` on submitit's local executor (no real Slurm here).

The cluster: a head with no CPUs and two worker nodes with one CPU each, all `ray start`ed inside
this test's own network namespace (`unshare -n`, only `lo`, every address 127.0.0.1: no traffic
leaves the machine); a bare git remote and a local DVC remote in the test's temp dir. Each node has
its own scratch folder (ANOMALY_BACKBONES_SCRATCH in the raylet's environment, which its workers
inherit), so "node-local" is real: a clone on node a is seen only there.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from anomaly_backbones.cluster.plan import exp_name
from anomaly_backbones.cluster.worker import exp_ref
from anomaly_backbones.dvc_client import parse_exp_show
from anomaly_backbones.sweep import apply_overrides
from conftest import ROOT

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="unshare -n needs root (CI runs as root)")]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0",
       # a dead node is declared dead after ~3 s instead of ~30 s
       "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
       "RAY_health_check_initial_delay_ms": "1000", "TQDM_MININTERVAL": "0"}
CLI = [sys.executable, "-m", "anomaly_backbones"]
TINY = {"backbone": "tf_efficientnet_lite0", "init": "imagenet", "methods": ["padim"],
        "synthetic.categories": ["chip"], "synthetic.n_train": 6, "synthetic.n_good_test": 3,
        "synthetic.n_defect_test": 2, "latency.runs": 0, "extract.engine": "eager"}
BACKBONES = ["resnet18", "squeezenet1_1", "mobilenet_v3_small"]
SUMMARY = re.compile(r"^  (success|exists|failed) +(\S+) on (\S+)", re.M)   # the driver's line per experiment
PIPELINE = ("dvc.yaml", ".gitignore", "stages", "src", ".dvc/config", ".dvc/plots", "pyproject.toml")


def sh(args, cwd=None, check=True, env=ENV):
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"{args} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def commit(cwd, msg):
    sh(["git", "add", "-A", "."], cwd=cwd)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", msg], cwd=cwd)


def make_project(base: Path) -> Path:
    """origin.git (bare) <- clone `a`: the working tree's pipeline, tiny params, a DVC remote in
    base/store (committed), the baseline (`dvc repro`) committed and pushed."""
    origin, a = base / "origin.git", base / "a"
    sh(["git", "init", "-q", "--bare", str(origin)])
    sh(["git", "clone", "-q", str(origin), str(a)])
    for f in PIPELINE:
        src = ROOT / f
        if src.is_dir():
            shutil.copytree(src, a / f, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            (a / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, a / f)
    (a / "params.yaml").write_text(yaml.safe_dump(apply_overrides(
        yaml.safe_load((ROOT / "params.yaml").read_text()), [f"{k}={json.dumps(v)}" for k, v in TINY.items()]),
        sort_keys=False))
    sh(["git", "checkout", "-q", "-b", "main"], cwd=a)
    sh(["dvc", "remote", "add", "-d", "store", str(base / "store")], cwd=a)
    sh(["dvc", "repro"], cwd=a)
    commit(a, "tiny baseline")
    sh(["git", "push", "-q", "origin", "main"], cwd=a)
    return a


class Cluster:
    """A head (0 CPUs) and worker nodes a, b (1 CPU each) in a private network namespace."""

    def __init__(self, base: Path):
        self.ns = subprocess.Popen(["unshare", "-n", "sleep", "3600"])
        time.sleep(0.2)
        self.pre = ["nsenter", "-t", str(self.ns.pid), "-n"]
        sh(self.pre + ["ip", "link", "set", "lo", "up"])
        self.tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))   # short: Ray's unix socket paths
        self.scratch = {n: base / f"scratch_{n}" for n in "ab"}
        ray = str(BIN / "ray")
        common = ["--node-ip-address=127.0.0.1", "--object-store-memory=80000000", "--disable-usage-stats"]
        sh(self.pre + [ray, "start", "--head", "--port=6379", "--num-cpus=0", "--include-dashboard=false",
                       f"--temp-dir={self.tmp}"] + common)
        for n in "ab":
            sh(self.pre + [ray, "start", "--address=127.0.0.1:6379", "--num-cpus=1", f"--resources={{\"node_{n}\": 1}}"]
               + common, env={**ENV, "ANOMALY_BACKBONES_SCRATCH": str(self.scratch[n])})

    def run(self, args, cwd, **kw):
        return sh(self.pre + args, cwd=cwd, **kw)

    def popen(self, args, cwd, log: Path):
        return subprocess.Popen(self.pre + args, cwd=cwd, env=ENV, stdout=open(log, "w"), stderr=subprocess.STDOUT)

    def raylet_pid(self, node: str) -> int:
        import psutil

        for p in psutil.process_iter(["name", "cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if "raylet" in (p.info["name"] or "") and f"node_{node}" in cmd and str(self.tmp) in cmd:
                return p.pid
        raise AssertionError(f"no raylet of node {node}")

    def stop(self):
        """End the processes this cluster started: those in its network namespace (never `ray stop`,
        which ends every Ray process of the machine)."""
        import psutil

        ns = os.readlink(f"/proc/{self.ns.pid}/ns/net")
        mine = []
        for p in psutil.process_iter():
            try:
                if p.pid != self.ns.pid and os.readlink(f"/proc/{p.pid}/ns/net") == ns:
                    mine.append(p)
            except (OSError, psutil.Error):
                continue
        for p in mine:
            p.kill()
        psutil.wait_procs(mine, timeout=10)
        self.ns.kill()
        self.ns.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def remote_exps(origin: Path) -> dict[str, str]:
    out = sh(["git", "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps"], cwd=origin).stdout
    return {ln.split()[0].rsplit("/", 1)[1]: ln.split()[1] for ln in out.splitlines()}


def wait_until(cond, timeout, what):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    base = tmp_path_factory.mktemp("cluster")
    a = make_project(base)
    cluster = Cluster(base)
    try:
        yield {"base": base, "a": a, "origin": base / "origin.git", "cluster": cluster}
    finally:
        cluster.stop()


def sweep_args(*extra):
    return CLI + ["sweep", "--backbones", ",".join(BACKBONES), "--init", "random", "--engine", "ray",
                  "--address", "127.0.0.1:6379", *extra]


def test_ray_sweep_survives_a_dead_node(project):
    a, origin, cluster = project["a"], project["origin"], project["cluster"]
    commit_sha = sh(["git", "rev-parse", "HEAD"], cwd=a).stdout.strip()
    log = project["base"] / "driver1.log"
    driver = cluster.popen(sweep_args(), a, log)
    # an experiment running on node a: its clone has started the stages (data/ exists)
    def running_on_a():
        return [d for d in cluster.scratch["a"].glob("*--*") if (d / "data").is_dir()]

    wait_until(lambda: running_on_a() or driver.poll() is not None, 240, "an experiment on node a")
    assert driver.poll() is None, log.read_text()
    killed = running_on_a()[0].name.split("--")[2]
    os.kill(cluster.raylet_pid("a"), signal.SIGKILL)
    assert driver.wait(timeout=600) == 0, log.read_text()
    out = log.read_text()
    # every experiment once on the remote, all pulled here; none failed, the dead node's one ran again on b
    names = remote_exps(origin)
    assert len(names) == 3 and killed in names, (names, out)
    entries = parse_exp_show(json.loads(sh(["dvc", "exp", "show", "--json"], cwd=a).stdout))
    exps = [e for e in entries if e.kind == "experiment"]
    assert sorted(e.name for e in exps) == sorted(names) and all(e.state == "success" for e in exps), exps
    assert sorted(e.params["backbone"] for e in exps) == sorted(BACKBONES)
    summary = [m.groups() for m in SUMMARY.finditer(out)]
    assert sorted(x[1] for x in summary) == sorted(names) and {x[0] for x in summary} == {"success"}, out
    assert len({x[2] for x in summary}) == 1, out   # a died during its first one: all finished on b
    # node b's scratch is empty (clones removed); node a's dead clone stays until a worker there starts
    assert not list(cluster.scratch["b"].glob("*--*"))
    dead = list(cluster.scratch["a"].glob("*--*"))
    assert [d.name.split("--")[2] for d in dead] == [killed]
    # and nothing still runs in it: the dead worker's `dvc exp run` and stages went with it (cluster.guard)
    import psutil

    def cwd(p):
        try:
            return p.cwd()
        except psutil.Error:
            return ""
    assert not [p.pid for p in psutil.process_iter() if cwd(p).startswith(str(dead[0]))]
    # the same metrics bytes as the same experiment run locally (a fresh clone without the DVC remote:
    # every stage computed here). Only the killed-and-retried one: each run is ~1 min on 2 cores.
    local = project["base"] / "local"
    sh(["git", "clone", "-q", "-b", "main", str(origin), str(local)])
    sh(["dvc", "remote", "remove", "store"], cwd=local)
    e = next(e for e in exps if e.name == killed)
    bb = e.params["backbone"]
    assert exp_name(bb, "random", e.params) == killed
    sets = [f"backbone={bb}", "init=random", "layers=auto", "padim.d=auto"]
    sh(["dvc", "exp", "run", "-n", "local"] + [x for s in sets for x in ("-S", s)], cwd=local)
    mine = sh(["git", "show", f"{exp_ref(commit_sha, 'local')}:metrics/metrics.json"], cwd=local).stdout
    theirs = sh(["git", "show", f"{exp_ref(commit_sha, killed)}:metrics/metrics.json"], cwd=a).stdout
    assert mine == theirs and json.loads(mine)["padim"], (mine, theirs)
    # in the report
    report = sh(CLI + ["report"], cwd=a).stdout
    table = "\n".join(p.read_text() for p in (a / "reports" / "tables").glob("*.md"))
    for e in exps:
        assert e.name in table, (e.name, report)
    # rerun: nothing to run
    again = cluster.run(sweep_args(), a).stdout
    assert "3 skipped, 0 to run" in again, again


def test_killed_driver_rerun_runs_nothing_twice(project):
    a, origin, cluster = project["a"], project["origin"], project["cluster"]
    before = set(remote_exps(origin))
    # a fit-only change (extract comes from the run-cache on the remote), two backbones: one per node
    args = sweep_args("-S", "padim.sigma=2.0")
    args[args.index("--backbones") + 1] = "resnet18,squeezenet1_1"
    log = project["base"] / "driver2.log"
    driver = cluster.popen(args, a, log)
    wait_until(lambda: set(remote_exps(origin)) - before or driver.poll() is not None, 300, "a first published one")
    driver.kill()
    driver.wait()
    time.sleep(3)   # Ray kills the dead driver's tasks (they share their owner's fate)
    published = set(remote_exps(origin)) - before
    assert 1 <= len(published) <= 2, log.read_text()
    out = cluster.run(args, a).stdout
    m = re.search(r"(\d) skipped, (\d) to run", out)
    assert m and int(m.group(1)) + int(m.group(2)) == 2 and int(m.group(1)) >= len(published), out
    summary = {m.group(2): m.group(1) for m in SUMMARY.finditer(out)}
    # nothing published before the rerun ran again; the rest ran once, and nothing failed
    assert not any(summary.get(n) == "success" for n in published), out
    assert "failed" not in summary.values(), out
    after = set(remote_exps(origin)) - before
    assert len(after) == 2 and published <= after and set(summary) == after - published, (out, published, after)


def test_slurm_engine_on_submitits_local_executor(project):
    """`--engine slurm` through submitit's local executor (no real Slurm in CI): a job array with
    `--no-wait`, then `sweep --collect` pulls what the tasks published. A fit-only change, so each
    task takes its features from the run-cache on the DVC remote."""
    a, origin = project["a"], project["origin"]
    before = set(remote_exps(origin))
    args = CLI + ["sweep", "--backbones", "resnet18,squeezenet1_1", "--init", "random", "-S", "padim.sigma=3.0",
                  "--engine", "slurm", "--slurm-executor", "local", "--no-wait"]
    out = sh(args, cwd=a).stdout
    assert "submitted job array" in out and "2 to run" in out, out
    wait_until(lambda: len(set(remote_exps(origin)) - before) == 2, 300, "the array's two experiments")
    new = set(remote_exps(origin)) - before
    got = sh(CLI + ["sweep", "--collect"], cwd=a).stdout
    assert "collect: 2/2 experiment(s) published and pulled" in got, got
    shown = parse_exp_show(json.loads(sh(["dvc", "exp", "show", "--json"], cwd=a).stdout))
    sigma3 = {e.name for e in shown if e.kind == "experiment" and e.params.get("padim", {}).get("sigma") == 3.0}
    assert sigma3 == new
    again = sh(args, cwd=a).stdout
    assert "2 skipped, 0 to run" in again, again


def test_an_experiment_that_fails_by_itself_returns_its_first_error_line(project, monkeypatch, tmp_path):
    """The worker function on its own (no engine): a bad param fails in prepare; the result says so in
    one line (a normal return, so Ray does not retry it), nothing is published, the clone is gone."""
    from anomaly_backbones.cluster.worker import run_experiment

    a, origin = project["a"], project["origin"]
    monkeypatch.setenv("ANOMALY_BACKBONES_SCRATCH", str(tmp_path / "scratch"))
    before = remote_exps(origin)
    spec = {"name": "bad-dataset", "sets": ["backbone=resnet18", "init=random", "data.dataset=nonexistent"],
            "git_url": str(origin), "commit": sh(["git", "rev-parse", "HEAD"], cwd=a).stdout.strip(),
            "dvc_remote": "store", "dvc_url": None}
    res = run_experiment(spec)
    assert res["status"] == "failed" and "nonexistent" in res["error"] and "\n" not in res["error"], res
    assert remote_exps(origin) == before
    assert list((tmp_path / "scratch").iterdir()) == []
