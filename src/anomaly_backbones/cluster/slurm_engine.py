"""`--engine slurm`: one Slurm job array through submitit, one array task per experiment, running the
same cluster.worker.run_experiment as a Ray task.

Slurm requeues nothing by itself here: a task whose node died ends as failed in sacct, and rerunning
the sweep runs it again (the finished ones are skipped: they are on the git remote). `--no-wait`
submits and returns (a login node may log out); `sweep --collect` later pulls what was published.
The tests run this engine on submitit's local executor (`--slurm-executor local`), not a real Slurm.
"""
from __future__ import annotations

import time
from pathlib import Path

from ..errors import UserError


def import_submitit():
    try:
        import submitit
    except ImportError:
        raise UserError("--engine slurm needs submitit: pip install -e '.[slurm]' (the pinned extra)") from None
    return submitit


def executor(folder: Path, kind: str, gpus: int, parallel: int, slurm_args: dict):
    submitit = import_submitit()
    if kind == "local":
        ex = submitit.LocalExecutor(folder=str(folder))
        ex.update_parameters(timeout_min=slurm_args.get("time", 600), gpus_per_node=gpus)
        return ex
    ex = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
    params = {"timeout_min": slurm_args.get("time", 600), "gpus_per_node": gpus, "cpus_per_task": slurm_args.get("cpus", 4),
              "slurm_array_parallelism": parallel}
    if slurm_args.get("partition"):
        params["slurm_partition"] = slurm_args["partition"]
    ex.update_parameters(**params)
    return ex


def submit(specs: list[dict], folder: Path, kind: str, gpus: int, parallel: int, slurm_args: dict) -> list:
    from .worker import run_experiment

    ex = executor(folder, kind, gpus, parallel, slurm_args)
    return ex.map_array(run_experiment, specs)


def wait(jobs: list, specs: list[dict], progress, poll: float = 2.0) -> list[dict]:
    from .worker import first_error

    pending = dict(zip((str(j.job_id) for j in jobs), zip(jobs, specs)))
    results = []
    while pending:
        for jid, (job, spec) in list(pending.items()):
            if not job.done():
                if job.state.upper() == "RUNNING":
                    progress.update(spec["name"], "running", f"job {jid}")
                continue
            try:
                res = job.result()
            except Exception as e:  # noqa: BLE001 - the job died (node failure, time limit, cancel)
                res = {"name": spec["name"], "status": "failed", "node": f"job {jid}",
                       "error": f"job {jid}: {first_error(str(e))}", "seconds": {}}
            results.append(res)
            progress.update(res["name"], res["status"], res.get("node"))
            del pending[jid]
        if pending:
            time.sleep(poll)
    return results
