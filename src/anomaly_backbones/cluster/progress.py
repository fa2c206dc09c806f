"""The driver's progress line (tqdm): done / running / queued / failed, and what runs on each node."""
from __future__ import annotations

import sys
from collections import Counter

FINISHED = ("success", "exists", "failed")


class Progress:
    """states: name -> queued | running | success | exists | failed; nodes: name -> where it runs/ran."""

    def __init__(self, names: list[str], desc: str = "sweep"):
        from tqdm import tqdm

        self.states = {n: "queued" for n in names}
        self.nodes: dict[str, str] = {}
        self.bar = tqdm(total=len(names), desc=desc, unit="exp", file=sys.stderr, dynamic_ncols=True)

    def update(self, name: str, state: str, node: str | None = None) -> None:
        before = self.states.get(name)
        if before in FINISHED or (before == state and (node is None or self.nodes.get(name) == node)):
            return
        self.states[name] = state
        if node:
            self.nodes[name] = node
        if state in FINISHED:
            self.bar.update(1)
        self.bar.set_postfix_str(self.line(), refresh=True)

    def line(self) -> str:
        c = Counter(self.states.values())
        per_node = Counter(self.nodes[n] for n, s in self.states.items() if s == "running" and n in self.nodes)
        nodes = " ".join(f"{k}:{v}" for k, v in sorted(per_node.items()))
        return (f"{c['success'] + c['exists']} done, {c['running']} running, {c['queued']} queued, "
                f"{c['failed']} failed" + (f" | running on {nodes}" if nodes else ""))

    def close(self) -> None:
        self.bar.close()
