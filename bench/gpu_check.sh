#!/usr/bin/env bash
# The GPU device check, about 8 minutes on one GPU (not run where no GPU is lent):
#   1. the CUDA tests: the CPU tests parametrized on the device, the "cuda" ones selected
#      (at most 100 s);
#   2. bench/gpu.py on the GPU at MVTec AD's size, wide_resnet50_2 first (the size targets are
#      its), then resnet18 and tf_efficientnet_lite0: no category starts after BUDGET_S seconds
#      (default 330), each backbone's forward pass is timed anyway, the JSON is rewritten after
#      every category, and the run is killed at BENCH_TIMEOUT (default 420 s).
# Run from anywhere: OUT=/some/folder bash bench/gpu_check.sh; it writes $OUT/cuda_tests.txt,
# $OUT/gpu.txt, $OUT/gpu.json and prints both results at the end. Needs no DVC and no network.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src TQDM_DISABLE=1
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"

python -c "import torch; assert torch.cuda.is_available(), 'torch sees no GPU'; \
print('torch', torch.__version__, 'on', torch.cuda.get_device_name(0))" || exit 1

timeout "${TESTS_TIMEOUT:-100}" python -m pytest -q -m "not slow" tests -k "cuda" -p no:cacheprovider \
    > "$OUT/cuda_tests.txt" 2>&1
tests_rc=$?

timeout "${BENCH_TIMEOUT:-420}" python bench/gpu.py --device cuda \
    --backbones wide_resnet50_2,resnet18,tf_efficientnet_lite0 --budget-s "${BUDGET_S:-330}" \
    --json "$OUT/gpu.json" > "$OUT/gpu.txt" 2>&1
bench_rc=$?

echo "== CUDA tests (exit $tests_rc; 124 = timed out): python -m pytest -q -m 'not slow' tests -k cuda"
grep -E "passed|failed|error|skipped|no tests|FAILED|ERROR" "$OUT/cuda_tests.txt" | tail -25
echo
echo "== bench/gpu.py (exit $bench_rc; 124 = timed out, $OUT/gpu.json holds the categories done)"
grep -E "^(note|error|budget)" "$OUT/gpu.txt"
sed -n '/^device:/,$p' "$OUT/gpu.txt"
[ "$bench_rc" -eq 0 ] || tail -20 "$OUT/gpu.txt"
