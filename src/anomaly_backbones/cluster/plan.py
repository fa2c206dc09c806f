"""The driver's side of a cluster sweep, before and after the engine runs the experiments.

    check_clean(root)                       -> UserError on a dirty tree (workers clone the commit)
    publish_baseline(root, git_remote, dvc_remote) -> Context: HEAD pushed, baseline outputs and the
                                               run-cache pushed, the remote's experiments pulled
    exp_name(backbone, init, params)        -> deterministic experiment name (a rerun is idempotent)
    make_specs(ctx, plan)                   -> one worker spec per experiment to run
    pull_results(ctx, names)                -> `dvc exp pull --no-cache` of the published experiments

Names: `<backbone>-<init>-<8 hex of sha256 of the experiment's params.yaml>` (git ref-safe), so the
same params always give the same name and `dvc exp run -n` never makes a second copy of an experiment.
"""
from __future__ import annotations

import hashlib
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .. import dvc_client as dvc
from ..errors import UserError


@dataclass
class Context:
    root: Path
    commit: str
    branch: str
    git_remote: str
    git_url: str
    dvc_remote: str
    dvc_url: str | None


def git(args: list[str], cwd: Path, check: bool = True) -> str:
    r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise UserError(f"`git {' '.join(args)}` failed: {(r.stderr.strip() or r.stdout.strip())[-300:]}")
    return r.stdout.strip()


def exp_name(backbone: str, init: str, params: dict) -> str:
    digest = hashlib.sha256(dvc.canonical(params).encode()).hexdigest()[:8]
    safe = re.sub(r"\.\.+", "_", re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{backbone}-{init}"))[:60].strip("._-")
    return f"{safe}-{digest}"


def check_clean(root: Path) -> None:
    dirty = git(["status", "--porcelain", "--untracked-files=normal"], root).splitlines()
    if dirty:
        shown = ", ".join(ln[3:] for ln in dirty[:5]) + (" ..." if len(dirty) > 5 else "")
        raise UserError(f"the working tree has uncommitted changes ({shown}): the cluster's workers clone a "
                        f"commit, so commit (or stash) them first, then rerun the sweep.")


def _dvc_remote(root: Path, name: str | None) -> tuple[str, str | None]:
    """(remote name, its URL as this repo resolves it: local paths absolute)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        conf = repo.config
        name = name or conf["core"].get("remote")
        if not name:
            raise UserError("no DVC remote: pass --dvc-remote NAME or set a default (`dvc remote add -d NAME URL`); "
                            "the workers pull the baseline from it and push their results to it.")
        if name not in conf["remote"]:
            raise UserError(f"--dvc-remote {name!r}: no such DVC remote (`dvc remote list` shows "
                            f"{', '.join(conf['remote']) or 'none'}).")
        url = str(conf["remote"][name]["url"])
    return name, url


def _git_url(root: Path, remote: str) -> str:
    url = git(["remote", "get-url", remote], root, check=False)
    if not url:
        raise UserError(f"--git-remote {remote!r}: no such git remote (`git remote -v`); the workers clone from it.")
    if "://" not in url and ":" not in url.split("/")[0] and not Path(url).is_absolute():
        url = str((root / url).resolve())   # a local path, relative to the repo: absolute for the workers
    return url


def publish_baseline(root: Path, git_remote: str, dvc_remote: str | None) -> Context:
    """Everything a worker needs, on the remotes; the experiments already there, here."""
    check_clean(root)
    commit = git(["rev-parse", "HEAD"], root)
    branch = git(["symbolic-ref", "--short", "-q", "HEAD"], root, check=False)
    if not branch:
        raise UserError("HEAD is detached: check out a branch, so that its commit can be pushed for the workers.")
    url = _git_url(root, git_remote)
    name, dvc_url = _dvc_remote(root, dvc_remote)
    git(["push", "-q", git_remote, f"HEAD:refs/heads/{branch}"], root)
    dvc.run(["push", "--run-cache", "-r", name], cwd=root)
    dvc.run(["exp", "pull", "--no-cache", git_remote], cwd=root)
    return Context(root, commit, branch, git_remote, url, name, dvc_url)


def make_specs(ctx: Context, todo: list[dict], init: str) -> list[dict]:
    """plan_sweep's entries to run -> worker specs (plain data)."""
    return [{"name": exp_name(p["backbone"], init, p["params"]), "backbone": p["backbone"], "sets": p["set"],
             "git_url": ctx.git_url, "commit": ctx.commit, "dvc_remote": ctx.dvc_remote, "dvc_url": ctx.dvc_url}
            for p in todo]


def pull_results(ctx: Context, names: list[str]) -> None:
    """The published experiments into this repo (refs and their git-tracked metrics; outputs stay on
    the DVC remote, `dvc exp apply NAME && dvc pull` brings one's outputs)."""
    if names:
        dvc.run(["exp", "pull", "--no-cache", ctx.git_remote, *names], cwd=ctx.root)
