"""Which finished runs a report compares: the committed run, the experiments and the workspace.

gather(root) -> Gathered(runs, skipped, notes, common). Sources, nothing re-run or applied:
  * the committed run at HEAD (the baseline) and at the base branch where that is another commit
    (metrics/*.json and params.yaml are committed files: `dvc exp show` reads them from git);
  * every finished experiment of `dvc exp show --json -A` (queued, running, failed ones -> skipped);
  * the workspace, unless `dvc status` says its metrics are not those of params.yaml.
The same run is listed once: runs with equal params.yaml and equal metrics/metrics.json are one run,
kept in the order HEAD, base branch, experiments (newest first), workspace; the others are listed as
skipped with the run they repeat. Timings (speed.json) do not take part: a re-run on another machine
with the same results is the same run.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .. import dvc_client as dvc
from ..dvc_client import LATENCY_FILE, METRICS_FILE, SPEED_FILE, Entry, canonical
from ..methods import METHODS, get_method
from ..metrics import PIXEL_KEYS

LOAD_FRACTION = 0.5   # a timing is "under load" when the 1-minute load average exceeded this x CPUs
BASE_CANDIDATES = ("origin/HEAD", "main", "master")


def under_load(load_1m, cpus) -> bool:
    """The load rule: other work competed for the CPUs while the run was timed."""
    try:
        return float(load_1m) > LOAD_FRACTION * float(cpus)
    except (TypeError, ValueError):
        return False


@dataclass
class Run:
    """One finished run: metrics.json with speed.json's per-method figures merged into each method."""
    label: str                      # "HEAD", the base branch's name, an experiment name or "workspace"
    rev: str                        # commit sha, or "workspace"
    kind: str                       # "commit" | "experiment" | "workspace"
    baseline: str | None            # an experiment's baseline commit (sha)
    timestamp: str | None
    params: dict
    metrics: dict
    role: str = ""                  # "baseline" (HEAD's committed run), "base" (the base branch's), ""
    variant: str = ""               # params (besides backbone and init) that set this run apart
    latency: dict | None = None     # metrics/latency.json, when the run has one
    host: dict = field(default_factory=dict)   # speed.json's host block: cpus, cpu_model, load_1m, device

    def __post_init__(self):
        """An image-level method's pixel metrics are null in metrics.json, and `dvc exp show`
        drops null metrics: restore them as None ("not applicable"), never "not recorded"."""
        for method, figures in self.metrics.items():
            if method in METHODS and get_method(method).level == "image" and isinstance(figures, dict):
                self.metrics[method] = {**dict.fromkeys(PIXEL_KEYS), **figures}

    @property
    def info(self) -> dict:
        return self.metrics.get("run") or {}

    @property
    def backbone(self) -> str:
        return str(self.info.get("backbone") or self.params.get("backbone") or "?")

    @property
    def init(self) -> str:
        return str(self.info.get("init") or self.params.get("init") or "?")

    @property
    def dataset(self) -> str:
        return str(self.info.get("dataset") or (self.params.get("data") or {}).get("dataset") or "?")

    @property
    def layers(self) -> list[str]:
        """The layers the run used (metrics.json's run.layers; params.yaml's when it lists them)."""
        got = self.info.get("layers")
        if isinstance(got, str) and got:
            return got.split(",")
        p = self.params.get("layers")
        return [str(x) for x in p] if isinstance(p, list) else []

    @property
    def device(self) -> str:
        """Where the timings were measured; runs older than the host block ran on the CPU."""
        return str(self.host.get("device") or self.info.get("device") or "cpu").lower()

    @property
    def under_load(self) -> bool:
        return under_load(self.host.get("load_1m"), self.host.get("cpus"))

    @property
    def methods(self) -> list[str]:
        return [k for k, v in self.metrics.items() if k != "run" and isinstance(v, dict) and "image_auroc" in v]

    @property
    def run_cell(self) -> str:
        return {"baseline": f"{self.label} (baseline)", "base": f"{self.label} (base branch)"}.get(self.role,
                                                                                                   self.label)


@dataclass
class Gathered:
    runs: list[Run] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (name, why)
    notes: list[str] = field(default_factory=list)
    common: dict[str, list[str]] = field(default_factory=dict)  # dataset -> params all its runs share
    #                                                                 that differ from params.yaml at HEAD


def _run(e: Entry, label: str, role: str = "") -> Run:
    metrics = dict(e.files[METRICS_FILE])
    speed = e.files.get(SPEED_FILE) or {}
    for method, figures in speed.items():
        if isinstance(metrics.get(method), dict) and isinstance(figures, dict):
            metrics[method] = {**metrics[method], **figures}
    host = speed.get("host") if isinstance(speed.get("host"), dict) else {}
    return Run(label=label, rev=e.rev or "?", kind=e.kind, baseline=e.baseline, timestamp=e.timestamp,
               params=e.params, metrics=metrics, role=role, latency=e.files.get(LATENCY_FILE), host=host)


def stale_reason(params: dict, info: dict) -> str | None:
    """Why metrics.json (its run block `info`) does not belong to params.yaml (None when it may)."""
    if not params or not info:
        return None
    checks = [("backbone", params.get("backbone"), info.get("backbone")),
              ("data.dataset", (params.get("data") or {}).get("dataset"), info.get("dataset")),
              ("seed", params.get("seed"), info.get("seed"))]
    for key, want, got in checks:
        if want is not None and got is not None and str(want).lower() != str(got).lower():
            return f"{METRICS_FILE} is from {key}={got} but params.yaml has {key}={want}"
    init, got = str(params.get("init", "")), str(info.get("init", ""))
    kind = got.split(":", 1)[0]
    if init in ("imagenet", "random") and kind in ("imagenet", "random", "file") and kind != init:
        return f"{METRICS_FILE} is from init={got} but params.yaml has init={init}"
    return None


def _base_rev(root: Path, base: str | None, head: str | None) -> tuple[str | None, str | None, str | None]:
    """(name, sha) of the base branch when it is another commit than HEAD, and a note."""
    names = [base] if base else list(BASE_CANDIDATES)
    for name in names:
        sha = dvc.git_rev(root, name)
        if sha:
            return (name, sha, None) if sha != head else (None, None, None)
    return None, None, (f"--base {base} is not a git revision here: only HEAD's committed run is compared"
                        if base else None)


def gather(root: str | Path = ".", all_commits: bool = True, base: str | None = None,
           entries: list[Entry] | None = None, status_json=None) -> Gathered:
    """The runs to compare (see the module docstring). entries / status_json: parsed `dvc exp show` and
    `dvc status` output (tests pass them; by default dvc is run in root)."""
    root = Path(root)
    head = dvc.git_rev(root, "HEAD")
    base_name, base_sha, base_note = _base_rev(root, base, head)
    g = Gathered(notes=[base_note] if base_note else [])
    if entries is None:
        entries = dvc.exp_show(root, all_commits, revs=["HEAD"] + ([base_sha] if base_sha else []))
    commits = {e.rev: e for e in entries if e.kind == "commit"}
    if head is None and len(commits) == 1:   # not a git checkout of its own (tests): the one commit listed
        head = next(iter(commits))
    ordered: list[tuple[Entry, str, str]] = []   # (entry, label, role) in the order that wins a duplicate
    for sha, label, role in ((head, "HEAD", "baseline"), (base_sha, base_name, "base")):
        e = commits.get(sha) if sha else None
        if e is not None:
            ordered.append((e, label, role))
    exps = [e for e in entries if e.kind == "experiment"]
    ordered += [(e, e.name, "") for e in sorted(exps, key=lambda e: e.timestamp or "", reverse=True)]
    ordered += [(e, "workspace", "") for e in entries if e.kind == "workspace"]

    ws_stale = None
    if any(e.kind == "workspace" and METRICS_FILE in e.files for e in entries):
        if status_json is None:
            status_json, why = dvc.status(root)
            if why:
                g.notes.append(f"`dvc status` failed ({why}): workspace checked against params.yaml only")
        ws_stale, ws_note = dvc.workspace_status(status_json or {})
        if ws_note:
            g.notes.append("workspace: " + ws_note)

    seen: dict[str, str] = {}
    for e, label, role in ordered:
        if not e.finished:
            g.skipped.append((label, e.state))
            continue
        if METRICS_FILE not in e.files:
            g.skipped.append((label, f"no {METRICS_FILE}"))
            continue
        why = stale_reason(e.params, e.files[METRICS_FILE].get("run") or {})
        why = (ws_stale or why) if e.kind == "workspace" else why
        if why:
            g.skipped.append((label, why))
            continue
        key = canonical([e.params, e.files[METRICS_FILE]])
        if key in seen:
            g.skipped.append((label, f"same params and results as {seen[key]}"))
            continue
        seen[key] = label
        g.runs.append(_run(e, label, role))
    reference = commits[head].params if head in commits else None
    for ds in sorted({r.dataset for r in g.runs}):  # variants are relative within one dataset's runs
        g.common[ds] = set_variants([r for r in g.runs if r.dataset == ds], reference)
    return g


def _flatten(d, prefix="") -> dict:
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def fmt_value(v) -> str:
    if isinstance(v, list):
        return "[" + ",".join(fmt_value(x) for x in v) + "]"
    return str(v)


def set_variants(runs: list[Run], reference: dict | None = None) -> list[str]:
    """variant = the params (other than backbone/init) that differ between runs, shown where a run's value
    differs from the reference (params.yaml at HEAD; the most common value where HEAD lacks the key).
    Returns the params all runs share but that differ from the reference ("k=v")."""
    flat = [_flatten({k: v for k, v in r.params.items() if k not in ("backbone", "init")}) for r in runs]
    ref = _flatten(reference) if reference else {}
    keys = sorted(set().union(*flat)) if flat else []
    base, common = {}, []
    for k in keys:
        vals = Counter(canonical(f.get(k)) for f in flat)
        if len(vals) > 1:
            base[k] = canonical(ref[k]) if k in ref else vals.most_common(1)[0][0]
        elif k in ref and canonical(ref[k]) != next(iter(vals)) and k not in ("backbone", "init"):
            common.append(f"{k}={fmt_value(flat[0].get(k))}")
    for r, f in zip(runs, flat):
        # a param a run does not have (older params.yaml without that group) sets nothing apart
        r.variant = ", ".join(f"{k}={fmt_value(f[k])}" for k in base if k in f and canonical(f[k]) != base[k])
    return common
