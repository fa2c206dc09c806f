"""`python -m anomaly_backbones sweep`: one queued DVC experiment per backbone, then run the queue.

    python -m anomaly_backbones sweep --family resnet --family efficientnet_lite
    python -m anomaly_backbones sweep --backbones resnet18,resnet50 --init random -S padim.d=100 -j 1
    python -m anomaly_backbones sweep --all --dry-run
    python -m anomaly_backbones sweep --all --init random --engine ray --address auto   (cluster/cli.py)

Per backbone: `dvc exp run --queue -S backbone=NAME -S init=INIT [-S ...]`, then `dvc queue start -j N`
and wait (polling `dvc queue status`), printing progress. A backbone is skipped when a finished
experiment (from `dvc exp show --json --all-commits`) has exactly the params the new one would have
(params.yaml of the workspace with the overrides applied), or one with those params is already
queued or running. Everything else is left to DVC: stages whose deps and params are unchanged
(generate, prepare; extract for a method-only change) come from the run-cache.

Because a sweep compares backbones at their registry defaults, `layers=auto` and `padim.d=auto` are
added when params.yaml pins other values (pass -S layers=... / -S padim.d=... to keep your own).
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import yaml

from .errors import UserError
from . import dvc_client as dvc
from .dvc_client import PARAMS_FILE, require_project
from .sweep_plan import (apply_overrides, experiment_states, parse_override,  # noqa: F401 (apply_overrides: re-exported)
                         plan_sweep, select_backbones)

DONE = ("success", "failed", "killed", "revoked", "gone")

def parse_queue_status(text: str) -> dict[str, str]:
    """`dvc queue status` table -> {experiment name: status (lower case)}."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3 or parts[0] == "Task" or line.startswith("Worker status"):
            continue
        if not re.fullmatch(r"[0-9a-f]{7,40}", parts[0]):
            continue
        out[parts[1]] = parts[-1].lower()
    return out


def _progress(names: dict[str, str], states: dict[str, str]) -> str:
    counts = {k: 0 for k in ("success", "failed", "running", "queued", "other")}
    for n in names:
        s = states.get(n, "gone")
        counts[s if s in counts else ("failed" if s in ("killed", "revoked") else "other")] += 1
    done = counts["success"] + counts["failed"] + counts["other"]
    return (f"{done}/{len(names)} done ({counts['success']} ok, {counts['failed']} failed) · "
            f"{counts['running']} running · {counts['queued']} queued")


def wait_for(names: dict[str, str], cwd: Path, jobs: int, poll: float, timeout: float | None) -> dict[str, str]:
    """Poll `dvc queue status` until every queued experiment has finished; returns {name: state}."""
    t0, last, restarted = time.time(), None, False
    states: dict[str, str] = {}
    idle_polls = 0
    while True:
        r = dvc.run(["queue", "status"], cwd=cwd, check=False)
        table = parse_queue_status(r.stdout)
        states = {n: table.get(n, "gone") for n in names}
        line = _progress(names, states)
        if line != last:
            print(f"[{time.strftime('%H:%M:%S')} +{int(time.time() - t0)}s] {line}", flush=True)
            last = line
        if all(s in DONE for s in states.values()):
            return states
        workers = re.search(r"Worker status:\s*(\d+) active", r.stdout)
        if workers and workers.group(1) == "0" and "running" not in states.values():
            idle_polls += 1
            if idle_polls >= 3 and not restarted:  # the worker stopped before our tasks ran: start it again
                print("no active queue worker; starting one again", flush=True)
                dvc.start_queue(cwd, jobs, check=False)
                restarted = True
        else:
            idle_polls = 0
        if timeout is not None and time.time() - t0 > timeout:
            print(f"stopped waiting after {timeout:.0f} s; the queue keeps running (`dvc queue status`).")
            return states
        time.sleep(poll)


def parser_sweep() -> argparse.ArgumentParser:
    """The command's argparse parser (its --help, and the usage `python -m anomaly_backbones` prints)."""
    ap = argparse.ArgumentParser(prog="python -m anomaly_backbones sweep",
                                 description="One DVC experiment per backbone: DVC's queue here, or a Ray cluster or Slurm with --engine.")
    ap.add_argument("--family", action="append", default=[], help="a registry family (repeatable)")
    ap.add_argument("--backbones", action="append", default=[], help="comma-separated registry names")
    ap.add_argument("--all", action="store_true", help="every backbone in the registry")
    ap.add_argument("--init", default="imagenet", help="init for every backbone (default imagenet; random)")
    ap.add_argument("-S", "--set-param", action="append", default=[], metavar="KEY=VALUE",
                    help="extra param override for every experiment (dvc exp run -S syntax)")
    ap.add_argument("-j", "--jobs", type=int, default=1, help="parallel queue workers (default 1)")
    ap.add_argument("--dry-run", action="store_true", help="print what would be queued and skipped; run nothing")
    ap.add_argument("--no-wait", action="store_true", help="queue and start the workers, do not wait")
    ap.add_argument("--poll", type=float, default=10.0, help="seconds between progress checks (default 10)")
    ap.add_argument("--timeout", type=float, default=None, help="stop waiting after this many seconds")
    from .cluster.cli import add_arguments

    add_arguments(ap)   # --engine ray|slurm, --collect: the sweep beyond one machine (cluster/)
    return ap


def main_sweep(argv: list[str] | None = None) -> None:
    from .cluster.cli import collect, main_cluster

    a = parser_sweep().parse_args(argv or [])
    root = Path(".")
    require_project(root, flag=None)
    if a.collect:
        return collect(root)
    if a.jobs < 1:
        raise UserError("-j must be >= 1")
    names = [n.strip() for chunk in a.backbones for n in chunk.split(",") if n.strip()]
    backbones = select_backbones(a.family, names, a.all)
    for o in a.set_param:
        key = parse_override(o)[1]
        if key in ("backbone", "init"):
            raise UserError(f"-S {o!r}: use --backbones/--family/--all and --init for {key}")
    try:
        base = yaml.safe_load((root / PARAMS_FILE).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{PARAMS_FILE} could not be read: {e}") from None
    if a.engine != "local":
        return main_cluster(a, backbones, base)
    exps = experiment_states(dvc.exp_show(root, all_commits=True))
    plan = plan_sweep(base, backbones, a.init, a.set_param, exps)
    todo = [p for p in plan if not p["skip"]]

    print(f"sweep: {len(plan)} backbone(s), init={a.init}; {len(plan) - len(todo)} skipped, {len(todo)} to queue")
    for p in plan:
        if p["skip"]:
            print(f"  skip   {p['backbone']}: {p['skip']}")
    if a.init == "imagenet" and todo:
        from .backbones import get_entry, weights_offline

        missing = [p["backbone"] for p in todo if not weights_offline(get_entry(p["backbone"]))]
        if missing:
            print(f"  note: ImageNet weights are not on this machine for {', '.join(missing)}; without internet "
                  f"those experiments fail in extract (sweep them with --init random, or supply the weights).")
    cmds = [["exp", "run", "--queue"] + [x for s in p["set"] for x in ("-S", s)] for p in todo]
    if a.dry_run:
        for p, c in zip(todo, cmds):
            print(f"  queue  {p['backbone']}: dvc {' '.join(_quote(x) for x in c)}")
        if todo:
            print(f"  then   dvc queue start -j {a.jobs}")
        print("dry run: nothing queued.")
        return
    if not todo:
        print("nothing to run. `python -m anomaly_backbones report` gathers the results.")
        return
    queued: dict[str, str] = {}
    for p, c in zip(todo, cmds):
        r = dvc.run(c, cwd=root)
        m = re.search(r"Queued experiment '([^']+)'", r.stdout + r.stderr)
        name = m.group(1) if m else f"?{len(queued)}"
        queued[name] = p["backbone"]
        print(f"  queued {p['backbone']} as {name}")
    dvc.start_queue(root, a.jobs)
    print(f"started {a.jobs} queue worker(s); progress every {a.poll:g} s (Ctrl-C stops waiting, not the queue)")
    if a.no_wait:
        print("not waiting: `dvc queue status` shows progress, `dvc queue logs <name>` a run's output.")
        return
    try:
        states = wait_for(queued, root, a.jobs, a.poll, a.timeout)
    except KeyboardInterrupt:
        print("\nstopped waiting; the queue keeps running (`dvc queue status`, `dvc queue kill <name>`).",
              file=sys.stderr)
        raise SystemExit(130) from None
    failed = [n for n, s in states.items() if s not in ("success", "queued", "running")]
    for n, s in states.items():
        print(f"  {s:8s} {queued[n]} ({n})")
    if failed:
        print(f"{len(failed)} failed: `dvc queue logs {failed[0]}` shows why.")
    print("next: python -m anomaly_backbones report")
    if failed:
        raise SystemExit(1)


def _quote(s: str) -> str:
    return f"'{s}'" if re.search(r"[\s\[\]{}*?$'\"]", s) else s


if __name__ == "__main__":  # pragma: no cover
    main_sweep(sys.argv[1:])


__all__ = ["main_sweep", "plan_sweep", "select_backbones", "apply_overrides", "parse_override",
           "parse_queue_status", "experiment_states"]
