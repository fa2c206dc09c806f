"""The one place that runs `dvc` and reads what it prints (report, show, sweep and pr-comment use it).

    run(args, cwd)                  -> CompletedProcess; a failure is a UserError with dvc's last lines
    exp_show(cwd, all_commits, revs) -> list[Entry]: `dvc exp show --json`, parsed once
    parse_exp_show(data)            -> list[Entry] (DVC 3 list format; the DVC 2 dict format too)
    read_at(cwd, path, rev)         -> text of a tracked file at a revision (git or DVC cache/remote), or None
    status(cwd)                     -> (`dvc status --json` dict or None, why it failed or None)
    workspace_status(status)        -> (why the workspace's metrics are stale or None, a note or None)

An Entry is one row of `dvc exp show`: the workspace, a commit (a baseline) or an experiment, with its
state (success, queued, running, failed...), params.yaml and the metrics files below as dicts. Files
that a row lacks (older runs, failed runs) are simply absent from `Entry.files`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError

PARAMS_FILE = "params.yaml"
METRICS_FILE = "metrics/metrics.json"   # run + quality (a function of the params alone)
SPEED_FILE = "metrics/speed.json"       # timings, memory and the host block (machine dependent)
LATENCY_FILE = "metrics/latency.json"   # batch-1 deployment latency (the latency stage)
PER_CATEGORY_FILE = "metrics/per_category.csv"
RUN_FILES = (METRICS_FILE, SPEED_FILE, LATENCY_FILE)


def require_project(root: Path, flag: str | None = "--repo") -> Path:
    """`root`, checked to be a DVC project (it holds dvc.yaml) before a command reads it; else one
    line naming the folder and the fix (`flag`: the command's option that names another root)."""
    if not (root / "dvc.yaml").exists():
        fix = f" or pass {flag}" if flag else ""
        raise UserError(f"{root.resolve()} has no dvc.yaml: run from the project root{fix}.")
    return root


def env() -> dict:
    """The environment for dvc: this interpreter's bin folder first, so stages find `python`/`dvc`."""
    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}


def exe() -> str:
    local = Path(sys.executable).parent / "dvc"
    if local.exists():
        return str(local)
    found = shutil.which("dvc")
    if not found:
        raise UserError("the `dvc` command was not found: install the requirements (make setup) "
                        "and put .venv/bin on PATH.")
    return found


def run(args: list[str], cwd: str | Path = ".", check: bool = True) -> subprocess.CompletedProcess:
    """`dvc <args>` with captured text output; check=True turns a non-zero exit into a UserError."""
    r = subprocess.run([exe(), *args], cwd=cwd, env=env(), capture_output=True, text=True)
    if check and r.returncode != 0:
        msg = (r.stderr.strip() or r.stdout.strip()).splitlines()
        raise UserError(f"`dvc {' '.join(args)}` failed in {cwd}: " + " | ".join(msg[-5:]))
    return r


def parse_json_output(text: str):
    """JSON from a command's stdout that may carry warnings or progress lines before it."""
    text = text.strip()
    if not text:
        raise ValueError("empty output")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    dec = json.JSONDecoder()
    for m in re.finditer(r"^[\[{]", text, flags=re.M):
        try:
            return dec.raw_decode(text[m.start():])[0]
        except json.JSONDecodeError:
            continue
    raise ValueError(f"no JSON in output: {text[:200]!r}")


def canonical(d) -> str:
    """A stable text form of params/metrics, for "same run" comparisons."""
    return json.dumps(d, sort_keys=True, default=str)


# ----------------------------------------------------------------------------------------- exp show

@dataclass
class Entry:
    """One row of `dvc exp show`."""
    name: str                       # "workspace", the branch name or short sha of a commit, the experiment name
    rev: str                        # commit sha, or "workspace"
    kind: str                       # "workspace" | "commit" | "experiment"
    state: str = "success"          # success | queued | running | failed | ... (DVC's executor state)
    baseline: str | None = None     # an experiment's baseline commit (sha)
    timestamp: str | None = None
    params: dict = field(default_factory=dict)
    files: dict[str, dict] = field(default_factory=dict)   # RUN_FILES path -> data, where present

    @property
    def finished(self) -> bool:
        return self.state == "success"


def file_data(section: dict | None, path: str) -> dict | None:
    """`{"params.yaml": {"data": {...}}}` -> the data; tolerant of missing files, errors and other keys."""
    if not isinstance(section, dict):
        return None
    entry = section.get(path)
    if entry is None:  # a path written differently (./metrics/metrics.json, Windows separators)
        norm = path.replace("\\", "/")
        for k, v in section.items():
            if str(k).replace("\\", "/").lstrip("./") == norm:
                entry = v
                break
    if not isinstance(entry, dict):
        return None
    data = entry.get("data", entry if "error" not in entry else None)
    return data if isinstance(data, dict) and data else None


def _entry(name, rev, kind, d: dict, state="success", baseline=None) -> Entry:
    files = {p: f for p in RUN_FILES if (f := file_data(d.get("metrics"), p)) is not None}
    return Entry(name=name, rev=rev, kind=kind, state=state, baseline=baseline, timestamp=d.get("timestamp"),
                 params=file_data(d.get("params"), PARAMS_FILE) or {}, files=files)


def _state(executor, default="success") -> str:
    return str((executor or {}).get("state") or default).lower()


def parse_exp_show(data) -> list[Entry]:
    """`dvc exp show --json` output -> entries in DVC's order (workspace, then each commit followed by
    its experiments). An experiment without a usable revision (every one errored) is "failed"."""
    out: list[Entry] = []
    if isinstance(data, dict):  # DVC 2.x: {rev: {"baseline": {"data": ...}, exp_rev: {"data": ...}}}
        for rev, group in data.items():
            if not isinstance(group, dict):
                continue
            base = (group.get("baseline") or {}).get("data") or {}
            if rev == "workspace":
                out.append(_entry("workspace", "workspace", "workspace", base))
                continue
            out.append(_entry(base.get("name") or rev[:7], rev, "commit", base))
            for exp_rev, e in group.items():
                if exp_rev == "baseline" or not isinstance(e, dict):
                    continue
                d = e.get("data") or {}
                state = str(d.get("status") or _state(d.get("executor"))).lower()
                state = "failed" if e.get("error") else state
                out.append(_entry(d.get("name") or exp_rev[:7], exp_rev, "experiment", d, state, rev))
        return out
    if not isinstance(data, list):
        raise ValueError(f"unexpected `dvc exp show --json` output: {type(data).__name__}")
    for b in data:
        if not isinstance(b, dict):
            continue
        rev, d = b.get("rev"), b.get("data") or {}
        if rev == "workspace":
            out.append(_entry("workspace", "workspace", "workspace", d, "failed" if b.get("error") else "success"))
            continue
        out.append(_entry(b.get("name") or str(rev)[:7], rev, "commit", d,
                          "failed" if b.get("error") else "success"))
        for group in b.get("experiments") or []:
            if not isinstance(group, dict):
                continue
            revs = [r for r in (group.get("revs") or []) if isinstance(r, dict)]
            good = [r for r in revs if not r.get("error") and r.get("data")]
            r = (good or revs or [{}])[0]   # the newest usable revision (checkpoints list more)
            name = r.get("name") or group.get("name") or str(r.get("rev") or "?")[:7]
            state = _state(group.get("executor"))
            if state in ("success", "") and not good:
                state = "failed" if revs else "no revisions"
            out.append(_entry(name, r.get("rev") or "?", "experiment", r.get("data") or {}, state or "success", rev))
    return out


def exp_show(cwd: str | Path = ".", all_commits: bool = True, revs: list[str] = ()) -> list[Entry]:
    """Entries of `dvc exp show --json` (-A: experiments on every commit; else those of HEAD and revs)."""
    args = ["exp", "show", "--json"] + (["-A"] if all_commits else [a for r in revs for a in ("--rev", r)])
    r = run(args, cwd=cwd)
    try:
        return parse_exp_show(parse_json_output(r.stdout))
    except ValueError as e:
        raise UserError(f"could not read `dvc exp show --json` output: {e}") from None


# ------------------------------------------------------------------------------------ files and status

def read_at(cwd: str | Path, path: str, rev: str) -> str | None:
    """The text of `path` at git revision `rev` ("workspace" = the file on disk): git-tracked files from
    git, DVC-tracked ones from the local DVC cache or the default remote. None where neither has it."""
    root = Path(cwd)
    if rev == "workspace":
        f = root / path
        return f.read_text() if f.exists() else None
    try:
        import dvc.api

        return dvc.api.read(path, repo=str(root), rev=rev)
    except Exception:  # noqa: BLE001 - in no cache and no remote: the caller reports it as missing
        return None


def git_rev(cwd: str | Path, rev: str) -> str | None:
    """The full sha of a git revision, or None where it does not resolve."""
    r = subprocess.run(["git", "rev-parse", "--verify", "-q", f"{rev}^{{commit}}"], cwd=cwd,
                       capture_output=True, text=True)
    return (r.stdout.strip() or None) if r.returncode == 0 else None


def status(cwd: str | Path = ".") -> tuple[dict | None, str | None]:
    """`dvc status --json` -> (its dict, None) or (None, why it could not be read)."""
    r = run(["status", "--json"], cwd=cwd, check=False)
    if r.returncode != 0:
        return None, (r.stderr.strip().splitlines() or ["?"])[-1]
    try:
        return parse_json_output(r.stdout), None
    except ValueError as e:
        return None, str(e)


def workspace_status(status_json: dict) -> tuple[str | None, str | None]:
    """`dvc status --json` -> (why the workspace metrics are stale, or None; a note, or None).

    Stale = some stage's outputs differ from dvc.lock, or its params changed: then metrics/metrics.json
    is not the result of params.yaml. Only code/data dependencies changed = the run is still the
    locked one (made with older code): included, with a note."""
    if not isinstance(status_json, dict) or not status_json:
        return None, None
    outs, params, deps = [], [], []
    for stage, changes in status_json.items():
        for ch in changes if isinstance(changes, list) else [changes]:
            if not isinstance(ch, dict):
                continue
            if ch.get("changed outs"):
                outs.append(stage)
            for dep, what in (ch.get("changed deps") or {}).items():
                (params if isinstance(what, dict) or str(dep).endswith(PARAMS_FILE) else deps).append(dep)
    if outs or params:
        return (f"`dvc status` reports changed {'outputs' if outs else 'params'} "
                f"({', '.join(dict.fromkeys(outs or params))}): the workspace metrics are not those of "
                f"params.yaml (a run in progress, or not reproduced since)"), None
    if deps:
        return None, f"dependencies changed since the workspace run: {', '.join(dict.fromkeys(deps))}"
    return None, None


def diff_md(kind: str, base: str, cwd: str | Path = ".") -> str:
    """`dvc metrics diff <base> --md` (kind "metrics") or `dvc params diff <base> --md` (kind "params")."""
    return run([kind, "diff", base, "--md"], cwd=cwd).stdout


def start_queue(cwd: str | Path, jobs: int, check: bool = True) -> str:
    """`dvc queue start -j N`. Its output goes to a file, not a pipe: the detached worker inherits the
    command's stdout/stderr, and a pipe would stay open (and block us) until the worker exits."""
    import tempfile

    with tempfile.TemporaryFile(mode="w+") as f:
        rc = subprocess.call([exe(), "queue", "start", "-j", str(jobs)], cwd=cwd, env=env(),
                             stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT)
        f.seek(0)
        text = f.read()
    if check and rc != 0:
        raise UserError(f"`dvc queue start -j {jobs}` failed: {text.strip()[-500:]}")
    return text
