"""Every registry entry x {random, imagenet where its weights are available offline} through
extract and every cache method (`reads = "features"`) on a tiny generated set: the check a
developer runs before a release (#29). Prints one markdown table (a row as each finishes): backbone, init, engine (and
why, where the extract stage said), extract s (the stage's wall time), and per method `ok` or
the error's first line.

Each (backbone, init) runs the real stage scripts (stages/03_extract.py, stages/04_fit.py) as
their own processes, in a work folder of its own beside one shared `data/prepared` (made once
by stages 01 and 02), so a crash, a memory blow-up or a hang of one backbone never takes the
others with it (`--timeout` per stage). Default params, except the tiny data and the params
below that only make the trained methods short (CFLOW-AD: one epoch of 1,024 fibers).

    python bench/registry_sweep.py [--backbones resnet18,vgg11] [--families] [--inits random,imagenet]
        [--methods padim,dn2] [--train-methods deep_svdd,panda,msc,doc] [--engine auto|eager|onnx]
        [--work /tmp/registry_sweep] [--timeout 900]

`--families`: one representative per family (the first entry of each), what the slow CI test runs.
`--train-methods`: the methods that train the backbone (stages/04_train.py) too, each shortened to
TRAIN_SHORT (one epoch of batches of 8): whether they run on every family, not what they reach.
DOC's labelled reference set is `--reference`, or else a seeded stand-in made once in the work
folder (two classes of eight 64 px noise images, tinted apart): enough to run, not to measure.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = {"synthetic": {"categories": ["chip"], "n_train": 10, "n_good_test": 2, "n_defect_test": 2},
        "cflow": {"epochs": 1, "fibers_per_epoch": 1024}, "latency": {"runs": 0}}
TRAIN_SHORT = {"epochs": 1, "batch_size": 8}


def merge(p: dict, changes: dict) -> dict:
    for k, v in changes.items():
        p[k] = merge(dict(p.get(k) or {}), v) if isinstance(v, dict) else v
    return p


def write_params(folder: Path, **changes) -> None:
    p = merge(yaml.safe_load((ROOT / "params.yaml").read_text()), {**TINY, **changes})
    (folder / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


def stage(folder: Path, script: str, *args: str, timeout: float) -> tuple[bool, str, float]:
    """(ok, the output's last lines, wall s) of one stage script run in `folder`."""
    t = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, str(ROOT / "stages" / script), *args], cwd=folder, text=True,
                           capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout:.0f} s", time.perf_counter() - t
    return r.returncode == 0, (r.stdout + "\n" + r.stderr), time.perf_counter() - t


def first_error(out: str) -> str:
    """The line that says what failed: `error: ...` (a UserError), else a traceback's last line."""
    lines = [x.strip() for x in out.replace("\r", "\n").splitlines() if x.strip()]
    for x in lines:
        if x.startswith("error:"):
            return x[:160]
    tb = [x for x in lines if ("Error" in x or "error" in x) and ":" in x and "%|" not in x]
    return ("traceback: " + tb[-1] if tb else (lines[-1] if lines else "failed"))[:160]


def engine_note(folder: Path, out: str) -> str:
    import json

    stats = folder / "data" / "features" / "stats.json"
    engine = json.loads(stats.read_text()).get("engine", "?") if stats.exists() else "?"
    why = [x.strip() for x in out.splitlines() if "eager" in x.lower() and ("note" in x or "onnx" in x.lower())]
    return f"{engine} ({why[0][:90]})" if why else engine


def stand_in_reference(folder: Path) -> Path:
    """A two-class ImageFolder of seeded noise images (DOC's `doc.reference`, for a run check only)."""
    from PIL import Image

    import numpy as np

    rng = np.random.default_rng(1024)
    for k, tint in enumerate(((60, 0, 0), (0, 0, 60))):
        (folder / f"class{k}").mkdir(parents=True, exist_ok=True)
        for i in range(8):
            x = np.clip(rng.integers(0, 196, (64, 64, 3)) + np.array(tint), 0, 255).astype(np.uint8)
            Image.fromarray(x).save(folder / f"class{k}" / f"{i}.png")
    return folder


def run_one(name: str, init: str, methods: list[str], prepared: Path, work: Path, timeout: float,
            engine: str = "auto", train_methods: tuple[str, ...] = (), reference: Path | None = None) -> dict:
    folder = work / f"{name}-{init}"
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "prepared").symlink_to(prepared)
    write_params(folder, backbone=name, init=init, methods=methods, extract={"engine": engine},
                 train_methods=list(train_methods),
                 **{m: {**TRAIN_SHORT, **({"reference": str(reference)} if m == "doc" else {})} for m in train_methods})
    ok, out, secs = stage(folder, "03_extract.py", timeout=timeout)
    row = {"backbone": name, "init": init, "engine": engine_note(folder, out) if ok else "-",
           "extract_s": secs, "methods": {}}
    for m in train_methods:   # read the prepared images, not the cache: run whatever extract did
        m_ok, m_out, _ = stage(folder, "04_train.py", m, timeout=timeout)
        row["methods"][m] = "ok" if m_ok else first_error(m_out)
    for m in methods:
        if not ok:
            row["methods"][m] = "extract failed: " + first_error(out)
            continue
        m_ok, m_out, _ = stage(folder, "04_fit.py", m, timeout=timeout)
        row["methods"][m] = "ok" if m_ok else first_error(m_out)
    shutil.rmtree(folder / "data" / "features", ignore_errors=True)   # the cache: GBs for the large ones
    return row


def table_head(methods: list[str]) -> str:
    head = ["backbone", "init", "engine", "extract s", *methods]
    return "| " + " | ".join(head) + " |\n|" + "---|" * len(head)


def table_row(r: dict, methods: list[str]) -> str:
    cells = [r["backbone"], r["init"], r["engine"], f"{r['extract_s']:.0f}",
             *(r["methods"][m].replace("|", "/") for m in methods)]
    return "| " + " | ".join(cells) + " |"


def main(argv=None) -> int:
    from anomaly_backbones.backbones import registry, weights_offline
    from anomaly_backbones.methods import METHODS, get_method

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", help="comma-separated names (default: the whole registry)")
    ap.add_argument("--families", action="store_true", help="one representative per family")
    ap.add_argument("--inits", default="random,imagenet", help="imagenet runs only where weights are offline")
    ap.add_argument("--methods", help="comma-separated (default: every cache method)")
    ap.add_argument("--train-methods", default="", help="comma-separated methods that train the backbone")
    ap.add_argument("--reference", help="doc.reference (default: a seeded stand-in in the work folder)")
    ap.add_argument("--engine", default="auto", help="extract.engine (eager skips the ONNX export)")
    ap.add_argument("--work", default="/tmp/registry_sweep")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per stage")
    a = ap.parse_args(argv)
    entries = registry()
    if a.backbones:
        entries = [e for e in entries if e["name"] in a.backbones.split(",")]
    if a.families:
        seen: set[str] = set()
        entries = [e for e in entries if not (e["family"] in seen or seen.add(e["family"]))]
    methods = a.methods.split(",") if a.methods else [k for k in METHODS if get_method(k).reads == "features"]
    train_methods = tuple(m for m in a.train_methods.split(",") if m)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    data = work / "_data"
    if not (data / "data" / "prepared" / "categories.json").exists():
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir()
        write_params(data)
        for script in ("01_generate.py", "02_prepare.py"):
            ok, out, _ = stage(data, script, timeout=a.timeout)
            if not ok:
                print(f"error: {script} failed: {first_error(out)}", file=sys.stderr)
                return 2
    reference = None
    if "doc" in train_methods:
        reference = Path(a.reference) if a.reference else stand_in_reference(work / "_reference")
    t0, rows = time.perf_counter(), []
    print(table_head([*train_methods, *methods]), flush=True)   # a row as each backbone finishes: a long sweep's table survives a stop
    for e in entries:
        for init in a.inits.split(","):
            if init == "imagenet" and not weights_offline(e):
                continue
            rows.append(run_one(e["name"], init, methods, data / "data" / "prepared", work, a.timeout, a.engine,
                                train_methods, reference))
            print(table_row(rows[-1], [*train_methods, *methods]), flush=True)
    print(f"\n{len(rows)} runs, {sum(all(v == 'ok' for v in r['methods'].values()) for r in rows)} with every "
          f"method ok; {time.perf_counter() - t0:.0f} s")
    return 0 if all(all(v == "ok" for v in r["methods"].values()) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
