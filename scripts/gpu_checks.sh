#!/usr/bin/env bash
# The checks that need a CUDA GPU, in stages that each fit a 10-minute command:
#   bash scripts/gpu_checks.sh build      build the CUDA extension for this GPU (and sm_80/sm_90)
#   bash scripts/gpu_checks.sh test       every test, on the GPU: all backends vs reference, opcheck, compile
#   bash scripts/gpu_checks.sh sanitize   compute-sanitizer memcheck and racecheck over the CUDA op tests
#   bash scripts/gpu_checks.sh bench      the benchmark suites (see benchmarks/README.md to split them)
# Logs go to $OUT when it is set (the device tool's output folder), else to gpu-logs/.
set -euo pipefail
cd "$(dirname "$0")/.."
logs=${OUT:-gpu-logs}
mkdir -p "$logs"
export PYTHONUNBUFFERED=1
case "${1:-}" in
  build)
    NVAE_FAST_BUILD_CUDA=1 bash scripts/setup.sh 2>&1 | tee "$logs/build.log"
    ;;
  test)
    python3 -m pytest -q -x --durations=20 2>&1 | tee "$logs/test.log"
    ;;
  sanitize)
    bash tests/cuda/run_sanitizer.sh 2>&1 | tee "$logs/sanitizer.log"
    ;;
  bench)
    shift
    python3 -m benchmarks.run --out benchmarks/results "$@" 2>&1 | tee "$logs/bench.log"
    ;;
  *)
    sed -n '2,7p' "$0"
    exit 2
    ;;
esac
