"""`sweep --engine ray|slurm`: the sweep on more than one machine (docs/reporting.md, "Beyond one machine").

    python -m anomaly_backbones sweep --all --init random --engine ray --address auto [--gpus-per-run 1]
    python -m anomaly_backbones sweep --all --engine slurm --slurm-partition gpu --no-wait
    python -m anomaly_backbones sweep --collect

The driver: refuses a dirty tree; pushes HEAD (git remote), the baseline's outputs and the run-cache
(DVC remote); `dvc exp pull`s what the remote already has; plans with the sweep's skip logic and names
each experiment deterministically (cluster.plan.exp_name); hands one spec per experiment to the
engine; shows progress; pulls the published experiments at the end. Rerunning the same command after
a crash (driver, node, whole cluster) runs only what is not on the remote yet.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..errors import UserError
from ..files import write_json

MANIFEST = Path(".dvc/tmp/cluster-sweep.json")   # what `--no-wait` submitted, for `--collect`


def add_arguments(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("beyond one machine (docs/reporting.md)")
    g.add_argument("--engine", choices=("local", "ray", "slurm"), default="local",
                   help="local: DVC's queue on this machine (default); ray: a Ray cluster; slurm: a submitit job array")
    g.add_argument("--address", default="auto", help="ray: the cluster (auto, or HEAD_IP:6379)")
    g.add_argument("--gpus-per-run", type=float, default=0, help="GPUs each experiment reserves (default 0: CPU)")
    g.add_argument("--git-remote", default="origin", help="git remote the workers clone from and push to (origin)")
    g.add_argument("--dvc-remote", default=None, help="DVC remote for outputs and run-cache (default: DVC's default)")
    g.add_argument("--collect", action="store_true", help="pull what a `--no-wait` cluster sweep has published")
    g.add_argument("--slurm-folder", default=".dvc/tmp/submitit", help="slurm: submitit's logs and pickles")
    g.add_argument("--slurm-partition", default=None, help="slurm: the partition")
    g.add_argument("--slurm-time", type=int, default=600, help="slurm: minutes per experiment (600)")
    g.add_argument("--slurm-cpus", type=int, default=4, help="slurm: CPUs per experiment (4)")
    g.add_argument("--slurm-executor", choices=("slurm", "local"), default="slurm",
                   help="slurm: `local` runs the array on this machine through submitit (tests, a trial)")


def _report(results: list[dict]) -> int:
    failed = [r for r in results if r["status"] == "failed"]
    for r in sorted(results, key=lambda r: r["name"]):
        s = r.get("seconds") or {}
        t = " ".join(f"{k} {v:.1f}s" for k, v in s.items() if k in ("clone", "run", "push", "total"))
        note = f": {r['error']}" if r["status"] == "failed" else (" (already on the remote)" if r["status"] == "exists" else "")
        print(f"  {r['status']:8s} {r['name']} on {r.get('node', '?')}{' · ' + t if t else ''}{note}")
    if failed:
        print(f"{len(failed)} failed by themselves (not retried); fix the cause and rerun the same command: "
              f"the finished ones are skipped. The full log: rerun one locally with `dvc exp run -S ...`.")
    return len(failed)


def collect(root: Path) -> None:
    from .plan import Context, pull_results
    from .worker import exp_ref, remote_rev

    if not (root / MANIFEST).exists():
        raise UserError(f"{MANIFEST}: no cluster sweep submitted from here (`sweep --engine slurm --no-wait` writes it)")
    m = json.loads((root / MANIFEST).read_text())
    ctx = Context(root=root, **m["context"])
    there = {n: remote_rev(ctx.git_url, exp_ref(ctx.commit, n)) for n in m["names"]}
    done = [n for n, rev in there.items() if rev]
    pull_results(ctx, done)
    print(f"collect: {len(done)}/{len(there)} experiment(s) published and pulled")
    for n, rev in there.items():
        print(f"  {'pulled' if rev else 'missing':8s} {n}")
    if len(done) < len(there):
        print(f"missing ones are still running or failed: their logs are in {m.get('folder', 'the engine')}; "
              f"rerun the same sweep command to run them again.")


def main_cluster(a, backbones: list[str], base: dict) -> None:
    from ..dvc_client import exp_show
    from ..sweep_plan import experiment_states, plan_sweep
    from . import plan as cplan
    from .progress import Progress

    root = Path(".")
    if a.engine == "ray":
        from .ray_engine import import_ray

        import_ray()
    else:
        from .slurm_engine import import_submitit

        import_submitit()
    if a.gpus_per_run < 0:
        raise UserError("--gpus-per-run must be >= 0")
    if a.dry_run:
        cplan.check_clean(root)
        ctx = None
    else:
        t = time.perf_counter()
        ctx = cplan.publish_baseline(root, a.git_remote, a.dvc_remote)
        t_publish = time.perf_counter() - t
    todo_plan = plan_sweep(base, backbones, a.init, a.set_param, experiment_states(exp_show(root, all_commits=True)))
    todo = [p for p in todo_plan if not p["skip"]]
    print(f"sweep on {a.engine}: {len(todo_plan)} backbone(s), init={a.init}; "
          f"{len(todo_plan) - len(todo)} skipped, {len(todo)} to run")
    for p in todo_plan:
        if p["skip"]:
            print(f"  skip   {p['backbone']}: {p['skip']}")
    if a.dry_run:
        for p in todo:
            print(f"  run    {cplan.exp_name(p['backbone'], a.init, p['params'])}: -S {' -S '.join(p['set'])}")
        print("dry run: nothing pushed or run.")
        return
    specs = cplan.make_specs(ctx, todo, a.init)
    if not specs:
        print("nothing to run. `python -m anomaly_backbones report` gathers the results.")
        return
    ctx_data = {k: getattr(ctx, k) for k in ("commit", "branch", "git_remote", "git_url", "dvc_remote", "dvc_url")}
    write_json(root / MANIFEST, {"context": ctx_data, "names": [s["name"] for s in specs], "folder": a.slurm_folder})
    for s in specs:
        print(f"  run    {s['backbone']} as {s['name']}")
    if a.engine == "slurm":
        from . import slurm_engine

        jobs = slurm_engine.submit(specs, root / a.slurm_folder, a.slurm_executor, int(a.gpus_per_run), len(specs),
                                   {"partition": a.slurm_partition, "time": a.slurm_time, "cpus": a.slurm_cpus})
        print(f"submitted job array {str(jobs[0].job_id).split('_')[0]} ({len(jobs)} task(s)); logs in {a.slurm_folder}")
        if a.no_wait:
            print("not waiting: `python -m anomaly_backbones sweep --collect` pulls what has finished.")
            return
    progress = Progress([s["name"] for s in specs], desc=f"sweep ({a.engine})")
    t_run = time.perf_counter()
    try:
        if a.engine == "ray":
            from . import ray_engine

            results = ray_engine.run(specs, a.address, a.gpus_per_run, progress)
        else:
            results = slurm_engine.wait(jobs, specs, progress)
    finally:
        progress.close()
    t_run, t = time.perf_counter() - t_run, time.perf_counter()
    cplan.pull_results(ctx, [r["name"] for r in results if r["status"] in ("success", "exists")])
    failed = _report(results)
    print(f"driver: publish {t_publish:.1f}s (push HEAD, baseline + run-cache, exp pull), experiments "
          f"{t_run:.1f}s, final exp pull {time.perf_counter() - t:.1f}s")
    print("next: python -m anomaly_backbones report")
    if failed:
        raise SystemExit(1)
