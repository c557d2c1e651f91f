#!/usr/bin/env bash
# The checks that need a CUDA GPU, in stages that each fit a 10-minute command:
#   bash scripts/gpu_checks.sh build      build the CUDA extension for this GPU (and sm_80/sm_90)
#   bash scripts/gpu_checks.sh test [pytest args]   every test on the GPU: backends vs reference, opcheck, compile
#   bash scripts/gpu_checks.sh sanitize [pytest args]   compute-sanitizer (TOOLS, default memcheck racecheck)
#   bash scripts/gpu_checks.sh bench [args]   the benchmark suites (see benchmarks/README.md to split them)
# Logs go to $OUT when it is set (the device tool's output folder), else to gpu-logs/; bench also packs
# benchmarks/results into bench-results.tar.gz there, even when it is killed.
set -euo pipefail
cd "$(dirname "$0")/.."
logs=${OUT:-gpu-logs}
mkdir -p "$logs"
export PYTHONUNBUFFERED=1
# A fresh device machine has neither the editable install (nvae_fast.kernels) nor the extension: without
# them every GPU test would be skipped, so the stages below build first when needed (setup.sh is idempotent).
build() {
  NVAE_FAST_BUILD_CUDA=1 bash scripts/setup.sh 2>&1 | tee "$logs/build.log"
}
ensure_built() {
  python3 -c "import nvae_fast.kernels, nvae_fast._C" 2>/dev/null || build
}
case "${1:-}" in
  build)
    build
    ;;
  test)
    # The whole suite, every failure listed (no -x: a GPU session is short); Triton's JIT compiles dominate,
    # so the tests run in NVAE_FAST_TEST_WORKERS processes (default 8) when pytest-xdist is installed;
    # tests marked xdist_group(name) share one worker (and so one run of their module-scoped fixtures).
    # The CPU emulation's own tests (test_emulation.py: builds of the emulated kernels) are CI's, not the GPU's.
    shift
    ensure_built
    workers=()
    if python3 -c "import xdist" 2>/dev/null; then
      workers=(-n "${NVAE_FAST_TEST_WORKERS:-8}" --dist loadgroup)
      export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}  # 8 workers x all cores each would oversubscribe the CPU
    fi
    python3 -m pytest -q -rfE "${workers[@]}" --durations=20 --junitxml="$logs/test.xml" \
      --ignore=tests/cuda/test_emulation.py "$@" 2>&1 | tee "$logs/test.log"
    ;;
  sanitize)
    shift
    ensure_built
    bash tests/cuda/run_sanitizer.sh "$@" 2>&1 | tee "$logs/sanitizer.log"
    ;;
  bench)
    shift
    # the device machine returns only files under $OUT (at most 8): the results travel as one archive
    trap 'tar -czf "$logs/bench-results.tar.gz" -C benchmarks results' EXIT
    ensure_built
    python3 -m benchmarks.run --out benchmarks/results "$@" 2>&1 | tee "$logs/bench.log"
    ;;
  *)
    sed -n '2,8p' "$0"
    exit 2
    ;;
esac
