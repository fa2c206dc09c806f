"""One experiment on one cluster node, the same function for every engine (Ray task, Slurm job).

    run_experiment(spec) -> {"name", "status", "node", "error", "rev", "seconds": {...}}

spec (built by cluster.plan.make_specs, plain data so that any engine can ship it):
    name, sets (the -S values), git_url, commit, dvc_remote (name), dvc_url (or None), ray (bool)

Steps, in node-local scratch (ANOMALY_BACKBONES_SCRATCH, default <tmp>/anomaly-backbones-sweep):
 1. the experiment's ref already on the git remote (an earlier attempt pushed it, then its node
    died before Ray heard back) -> status "exists", nothing runs: every experiment lands once;
 2. a fresh clone of git_url at the driver's commit (never a shared repository: parallel runs in
    one repo block on .dvc/tmp/rw.lock and race on packed-refs); stale clones of dead workers on
    this host are removed first;
 3. `dvc exp run --pull -n NAME -S ...` (outputs of unchanged stages come from the remote run-cache),
    under cluster.guard so that the stages die with the worker; PYTHONPATH=<clone>/src, so that the
    stages run the code of the commit, as the DAG records it;
 4. `dvc exp push --run-cache origin NAME` (outputs, run-cache, the git ref: publishing is the last step,
    nothing partial is ever visible), then `git ls-remote` must show the local experiment commit:
    `dvc exp push` of a diverged experiment only warns and exits 0;
 5. the clone is removed, whatever happened.

An experiment that fails by itself (a stage error) returns status "failed" with the first error line:
a normal return, so Ray does not retry it. Only a dead worker or node (an exception Ray raises in
the driver) is retried.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

SCRATCH_ENV = "ANOMALY_BACKBONES_SCRATCH"


def scratch_root() -> Path:
    return Path(os.environ.get(SCRATCH_ENV) or Path(tempfile.gettempdir()) / "anomaly-backbones-sweep")


def exp_ref(commit: str, name: str) -> str:
    """DVC 3's git ref of experiment `name` on baseline `commit`."""
    return f"refs/exps/{commit[:2]}/{commit[2:]}/{name}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(root: Path) -> list[str]:
    """Remove clones <host>--<pid>--* of this host whose worker process is gone; returns their names."""
    host, gone = socket.gethostname(), []
    if not root.is_dir():
        return gone
    for d in root.iterdir():
        parts = d.name.split("--")
        if len(parts) >= 3 and parts[0] == host and parts[1].isdigit() and not _pid_alive(int(parts[1])):
            shutil.rmtree(d, ignore_errors=True)
            gone.append(d.name)
    return gone


def first_error(text: str) -> str:
    """The first line that says what went wrong (DVC's `ERROR:`, a stage's `error:`, a Python exception)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for pat in (r"^(ERROR|error)\b", r"^\w*(Error|Exception)\b", r"(?i)\berror\b"):
        for ln in lines:
            if re.search(pat, ln):
                return ln[:300]
    return (lines[-1] if lines else "no output")[:300]


def _sh(args: list[str], cwd: Path | None, env: dict, guard: bool = False) -> subprocess.CompletedProcess:
    if guard:
        from .guard import pdeathsig

        args = [sys.executable, "-m", "anomaly_backbones.cluster.guard", *args]
        return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, preexec_fn=pdeathsig)
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)


def remote_rev(git_url: str, ref: str, env: dict | None = None) -> str | None:
    """The sha of `ref` on the git remote, or None where it has none."""
    r = subprocess.run(["git", "ls-remote", git_url, ref], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"git ls-remote {git_url} failed: {first_error(r.stderr)}")
    line = r.stdout.strip().splitlines()
    return line[0].split()[0] if line else None


def _env() -> dict:
    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), "GIT_TERMINAL_PROMPT": "0"}


def node_label() -> str:
    """Where this runs: the Ray node (short id) when inside a Ray task, else the host name."""
    try:
        import ray

        if ray.is_initialized():
            return f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:6]}"
    except Exception:  # noqa: BLE001 - not in Ray
        pass
    return socket.gethostname()


def run_experiment(spec: dict) -> dict:
    """One experiment, start to published (see the module docstring). Never raises for a failure of
    the experiment itself; raises only where the node cannot work at all (no git, no scratch)."""
    t0 = time.perf_counter()
    name, commit, url = spec["name"], spec["commit"], spec["git_url"]
    out = {"name": name, "node": node_label(), "status": "failed", "error": None, "rev": None, "seconds": {}}
    env = _env()
    ref = exp_ref(commit, name)
    have = remote_rev(url, ref, env)
    if have:
        out.update(status="exists", rev=have)
        return out
    root = scratch_root()
    root.mkdir(parents=True, exist_ok=True)
    clean_stale(root)
    work = root / f"{socket.gethostname()}--{os.getpid()}--{name}--{uuid.uuid4().hex[:6]}"
    secs = out["seconds"]
    try:
        t = time.perf_counter()
        for cmd in (["git", "clone", "-q", "--no-checkout", url, str(work)],
                    ["git", "-C", str(work), "checkout", "-q", "--detach", commit]):
            r = _sh(cmd, None, env)
            if r.returncode != 0:
                out["error"] = f"{' '.join(cmd[:2])}: {first_error(r.stderr + r.stdout)}"
                return out
        if spec.get("dvc_url"):
            r = _sh(["dvc", "remote", "add", "--local", "-f", "-d", spec["dvc_remote"], spec["dvc_url"]], work, env)
        elif spec.get("dvc_remote"):
            r = _sh(["dvc", "remote", "default", "--local", spec["dvc_remote"]], work, env)
        else:
            r = None
        if r is not None and r.returncode != 0:
            out["error"] = f"dvc remote: {first_error(r.stderr + r.stdout)}"
            return out
        secs["clone"] = time.perf_counter() - t
        t = time.perf_counter()
        run_env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(work / "src"), env.get("PYTHONPATH")]))}
        if spec.get("ray"):
            # Ray sets OMP_NUM_THREADS=<the task's CPUs> (1): torch would sum in another order than a local
            # run on the same machine, and the metrics would differ in the 6th decimal (measured). The
            # stages run with torch's own default, as `dvc exp run` does here.
            run_env.pop("OMP_NUM_THREADS", None)
        cmd = ["dvc", "exp", "run", "--pull", "-n", name] + [x for s in spec["sets"] for x in ("-S", s)]
        r = _sh(cmd, work, run_env, guard=True)
        secs["run"] = time.perf_counter() - t
        if r.returncode != 0:
            out["error"] = first_error(r.stderr + "\n" + r.stdout)
            return out
        local = subprocess.run(["git", "rev-parse", "-q", "--verify", ref], cwd=work, capture_output=True,
                               text=True).stdout.strip()
        if not local:
            out["error"] = f"dvc exp run finished but made no experiment ref {ref}"
            return out
        t = time.perf_counter()
        push = ["dvc", "exp", "push", "--run-cache"] + (["-r", spec["dvc_remote"]] if spec.get("dvc_remote") else [])
        r = _sh(push + ["origin", name], work, env)
        secs["push"] = time.perf_counter() - t
        if r.returncode != 0:
            out["error"] = f"dvc exp push: {first_error(r.stderr + r.stdout)}"
            return out
        there = remote_rev(url, ref, env)
        if there != local:
            out["error"] = (f"dvc exp push did not publish {name}: the remote has {there or 'no'} {ref}, the run "
                            f"made {local[:12]} (a diverged experiment of the same name?)")
            return out
        out.update(status="success", rev=local)
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)
        secs["total"] = time.perf_counter() - t0
