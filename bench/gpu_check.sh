#!/usr/bin/env bash
# The GPU device check, at most about 8 minutes (typically 7) on one GPU (not run where no GPU is lent):
#   0. the environment to $OUT/env.txt (nvidia-smi, the driver, bench/gpu_env.py: package
#      versions, the GPUs torch sees, the lite0 weights file found); then it stops with
#      "torch sees no GPU" (exit 1) where torch sees none;
#   1. the CUDA tests: the CPU tests parametrized on the device, the "cuda" ones selected
#      (killed at TESTS_TIMEOUT, default 90 s);
#   2. bench/gpu.py on the GPU at MVTec AD's size, wide_resnet50_2 first (the size targets are
#      its), then resnet18 and tf_efficientnet_lite0: no category starts after BUDGET_S seconds
#      counted from the end of data generation (default 250), each backbone's forward pass is
#      timed anyway, a failing method or category is recorded and the run goes on, gpu.json is
#      replaced (atomically) after every category, and the run is killed at BENCH_TIMEOUT
#      (default 370 s); the report is then rebuilt from gpu.json alone (bench/gpu_report.py).
# Run from anywhere: OUT=/some/folder bash bench/gpu_check.sh; it writes $OUT/env.txt,
# $OUT/cuda_tests.txt, $OUT/gpu.txt, $OUT/gpu.json, $OUT/gpu_report.md and prints the results
# at the end. PYTHON (default python3) runs it; PYTHONPATH is kept (travelling wheels) with src/
# put first. Needs no DVC and no network. bench/gpu_prepare.sh prints the one command that runs
# it on the GPU machine. DEVICE=cpu (with BENCH_ARGS, more bench/gpu.py flags, e.g. a tiny
# --scale) skips the GPU test and runs every later step on the CPU: bench/gpu_dryrun.py's rehearsal.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
case ":${PYTHONPATH:-}:" in *":$PWD/src:"*) ;; *) export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" ;; esac
export TQDM_DISABLE=1 PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"

{
    echo "date: $(date -u +%FT%TZ)"; echo "host: $(uname -srm), $(nproc) CPUs"
    if command -v nvidia-smi > /dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1
        nvidia-smi 2>&1 | head -20
    else
        echo "nvidia-smi: not found"
    fi
    timeout -k 5 60 "$PY" -u bench/gpu_env.py 2>&1
} > "$OUT/env.txt"
grep -E "^(python|torch|timm|lite0 weights|GPUs torch sees|cuda:)" "$OUT/env.txt"

[ "${DEVICE:-cuda}" = cpu ] || "$PY" -u - <<'EOF' || { echo "nothing to check on this machine; the environment is in $OUT/env.txt"; exit 1; }
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"torch sees no GPU (torch {torch.__version__}, CUDA build {torch.version.cuda})")
print("torch", torch.__version__, "on", torch.cuda.get_device_name(0))
EOF

timeout -k 10 "${TESTS_TIMEOUT:-90}" "$PY" -u -m pytest -v --durations=15 -m "not slow" tests -k "cuda" -p no:cacheprovider \
    --continue-on-collection-errors > "$OUT/cuda_tests.txt" 2>&1
tests_rc=$?

# shellcheck disable=SC2086 # BENCH_ARGS: words
timeout -k 10 "${BENCH_TIMEOUT:-370}" "$PY" -u bench/gpu.py --device "${DEVICE:-cuda}" \
    --backbones wide_resnet50_2,resnet18,tf_efficientnet_lite0 --budget-s "${BUDGET_S:-250}" ${BENCH_ARGS:-} \
    --json "$OUT/gpu.json" > "$OUT/gpu.txt" 2>&1
bench_rc=$?
if [ -f "$OUT/gpu.json" ]; then
    "$PY" -u bench/gpu_report.py "$OUT/gpu.json" > "$OUT/gpu_report.md" 2>&1
else
    echo "no gpu.json: bench/gpu.py ended before its first backbone's forward pass" > "$OUT/gpu_report.md"
fi

echo "== CUDA tests (exit $tests_rc; 124 = timed out, $OUT/cuda_tests.txt has each test's line): $PY -m pytest -v -m 'not slow' tests -k cuda"
echo "per test: $(grep -c ' PASSED' "$OUT/cuda_tests.txt") passed, $(grep -c ' FAILED' "$OUT/cuda_tests.txt") failed," \
    "$(grep -c ' SKIPPED' "$OUT/cuda_tests.txt") skipped, $(grep -c ' ERROR' "$OUT/cuda_tests.txt") errors"
grep -E "^(FAILED|ERROR) |^=+ .* in [0-9.]+s|^[0-9.]+s (call|setup) " "$OUT/cuda_tests.txt" | tail -40
echo
echo "== bench/gpu.py (exit $bench_rc; 2 = steps failed, see errors; 124 = timed out): the report rebuilt from $OUT/gpu.json"
grep -E "^(note|error:|budget)" "$OUT/gpu.txt"
cat "$OUT/gpu_report.md"
[ "$bench_rc" -eq 0 ] || tail -20 "$OUT/gpu.txt"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]   # the exit status: 0 when both passed
