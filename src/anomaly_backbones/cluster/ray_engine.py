"""`--engine ray`: one Ray task per experiment (cluster.worker.run_experiment) on a running cluster.

Ray retries a task whose worker process or node died (max_retries, system failures only); an
experiment that fails by itself returns status "failed" and is not retried (retry_exceptions=False).
Each task tells a small progress actor, pinned to the head node, where it started, so the driver
shows what runs on which node. Ray sets CUDA_VISIBLE_DEVICES from num_gpus; `device: auto` uses it.
"""
from __future__ import annotations

from ..errors import UserError

RETRIES = 3   # attempts after a dead worker or node, per experiment


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--engine ray needs Ray: pip install -e '.[ray]' (the pinned extra)") from None
    return ray


def run(specs: list[dict], address: str, gpus: float, progress, poll: float = 1.0) -> list[dict]:
    ray = import_ray()
    from ray.exceptions import RayError

    from .worker import first_error, run_experiment

    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR", configure_logging=True)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise UserError(f"--address {address}: could not connect to a Ray cluster ({first_error(str(e))}); "
                        f"start one with `ray start --head` (docs/reporting.md)") from None

    @ray.remote(num_cpus=0, resources={"node:__internal_head__": 0.001})
    class Board:
        def __init__(self):
            self.started: dict[str, str] = {}

        def start(self, name: str, node: str) -> None:
            self.started[name] = node

        def snapshot(self) -> dict:
            return dict(self.started)

    board = Board.remote()

    def task(spec: dict, board) -> dict:
        from .worker import node_label

        board.start.remote(spec["name"], node_label())
        return run_experiment(spec)

    remote = ray.remote(task).options(num_cpus=1, num_gpus=gpus, max_retries=RETRIES, retry_exceptions=False)
    refs = {remote.remote({**s, "ray": True}, board): s for s in specs}
    pending, results = list(refs), []
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=poll)
            for name, node in ray.get(board.snapshot.remote()).items():
                progress.update(name, "running", node)
            for ref in done:
                spec = refs[ref]
                try:
                    res = ray.get(ref)
                except RayError as e:   # retries spent (node after node died), or Ray could not run it
                    res = {"name": spec["name"], "status": "failed", "node": progress.nodes.get(spec["name"], "?"),
                           "error": f"{type(e).__name__}: {first_error(str(e))}", "seconds": {}}
                results.append(res)
                progress.update(res["name"], res["status"], res.get("node"))
    finally:
        ray.shutdown()
    return results
