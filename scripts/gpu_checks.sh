#!/usr/bin/env bash
# The checks that need a CUDA GPU, in stages that each fit a 10-minute command:
#   bash scripts/gpu_checks.sh build      build the CUDA extension for this GPU (and sm_80/sm_90)
#   bash scripts/gpu_checks.sh test [pytest args]   every test on the GPU: backends vs reference, opcheck, compile
#   bash scripts/gpu_checks.sh sanitize [pytest args]   compute-sanitizer (TOOLS, default memcheck racecheck)
#   bash scripts/gpu_checks.sh bench [args]   the benchmark suites (see benchmarks/README.md to split them)
#   bash scripts/gpu_checks.sh session   all of the above that fits one command of GPU_SESSION_S seconds
#                                        (default 510), most needed first; see session() below
# Logs go to $OUT when it is set (the device tool's output folder), else to gpu-logs/; bench and session
# also pack benchmarks/results into bench-results.tar.gz there, even when killed. Where the copy of the
# tree has no .git, pass NVAE_BENCH_GIT_COMMIT=<hash> for the result files.
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
# The device machine returns only files under $OUT (at most 8): the results travel as one archive.
pack_results() {
  tar -czf "$logs/bench-results.tar.gz" -C benchmarks results
}
# One step of a session: runs "$@" under a time limit of min(cap, seconds left before the deadline
# minus the reserve kept for the steps after it); skipped when less than 30 s would be left for it.
# Records "name rc seconds" in $logs/session.txt (rc 124: stopped by its time limit).
step() {
  local name=$1 cap=$2 reserve=$3
  shift 3
  local left=$((deadline - SECONDS - reserve))
  local limit=$((cap < left ? cap : left))
  if [ "$limit" -lt 30 ]; then
    echo "$name skipped 0 (${left}s left)" >> "$logs/session.txt"
    return 0
  fi
  local start=$SECONDS rc=0
  # (through bash -c, so that a step can be one of this script's functions; SIGINT first: pytest then
  # still reports and writes what it has)
  STEP_LIMIT=$limit timeout --signal=INT --kill-after=20 "$limit" bash -c '"$@"' "$name" "$@" || rc=$?
  echo "$name $rc $((SECONDS - start))" >> "$logs/session.txt"
}
bench_step() {  # benchmarks.run stopping itself 20 s before the step's limit, so that it writes its rows
  python3 -m benchmarks.run --out benchmarks/results --max-minutes "$(python3 -c "print(max(($STEP_LIMIT - 20) / 60, 0.1))")" "$@" \
    >> "$logs/bench.log" 2>&1
}
# The device lease is 15 minutes including the machine's start, so a session is one command. Order:
# the build, the GPU test suite (correctness on the real device before any timing), the benchmark rows
# the targets and #5 need (ops at the CIFAR-10 and target shapes without torch.compile, the CIFAR-10
# training step lean vs reference, then torch.compile of BN+Swish for its target), and memcheck last.
session() {
  deadline=$(( ${GPU_SESSION_S:-510} ))
  : > "$logs/session.txt"
  export logs OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
  export -f build bench_step
  trap pack_results EXIT
  TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} step build 240 300 build
  python3 -c "import nvae_fast._C" 2>/dev/null || { echo "build failed: see build.log" | tee -a "$logs/session.txt"; exit 1; }
  step test 170 240 python3 -m pytest -v -rfE -n "${NVAE_FAST_TEST_WORKERS:-8}" --dist loadgroup -p no:cacheprovider \
    --junitxml="$logs/test.xml" --ignore=tests/cuda/test_emulation.py tests/cuda tests/kernels tests/ops tests/nn \
    > "$logs/test.log" 2>&1
  step bench-ops 150 140 bench_step --sections ops --sets cifar10,target \
    --providers triton,cuda,torch,reference,reference_cl,stack_bmm
  step bench-model 90 50 bench_step --sections model --presets cifar10 --providers cuda,triton,torch,reference \
    --no-max-batch
  step bench-compile 60 40 bench_step --sections ops --ops bn_swish --sets cifar10 --providers compile
  step memcheck 40 0 env TOOLS=memcheck bash tests/cuda/run_sanitizer.sh -k "float32 and contiguous" \
    > "$logs/sanitizer.log" 2>&1
  cat "$logs/session.txt"
  tail -n 3 "$logs/test.log"
  local latest
  latest=$(find benchmarks/results -mindepth 1 -maxdepth 1 -type d ! -name '*-smoke' | sort | tail -n 1)
  if [ -n "$latest" ]; then python3 -m benchmarks.auto_order "$latest" || true; fi
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
    trap pack_results EXIT
    ensure_built
    python3 -m benchmarks.run --out benchmarks/results "$@" 2>&1 | tee "$logs/bench.log"
    ;;
  session)
    session
    ;;
  *)
    sed -n '2,11p' "$0"
    exit 2
    ;;
esac
