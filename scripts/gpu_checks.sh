#!/usr/bin/env bash
# The checks that need a CUDA GPU, in stages that each fit a 10-minute command:
#   bash scripts/gpu_checks.sh build      build the CUDA extension for this GPU (and sm_80/sm_90)
#   bash scripts/gpu_checks.sh test [pytest args]   every test on the GPU: backends vs reference, opcheck, compile
#   bash scripts/gpu_checks.sh sanitize [pytest args]   compute-sanitizer (TOOLS, default memcheck racecheck)
#   bash scripts/gpu_checks.sh bench [args]   the benchmark suites (see benchmarks/README.md to split them)
#   bash scripts/gpu_checks.sh session [--plan]   what the targets need most, in one command of
#                                        GPU_SESSION_S seconds (default 480) for a GPU machine with 15
#                                        minutes of time in all; --plan prints the steps and caps
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
# The session: one command for a GPU machine with 15 minutes of time in all (machine start included),
# GPU_SESSION_S seconds (default 480, which leaves time for a second, shorter call). Its steps, in
# order, with their caps in seconds; the caps add up to the deadline, and time a step leaves unused goes
# to the steps after it. `session --plan` prints this plan without running anything.
#   build         the CUDA extension for sm_90 only (offline: PIP_NO_INDEX=1)
#   bench-power   power iteration over every conv weight of the CIFAR-10 model: stack_bmm, cuda, triton
#   bench-dw      depthwise 5x5, N=32, C=768, 16x16 then 32x32: ATen NCHW, cuDNN channels_last, cuda, triton
#   bench-bn-se   BN+Swish and squeeze-excite at the CIFAR-10 then CelebA-64 shapes: eager, cuda, triton
#   bench-compile torch.compile of BN+Swish at the CIFAR-10 shapes (its target's baseline)
#   bench-model   the CIFAR-10 training step at batch 32: reference first, then cuda, triton, torch
#   probes        the seconds auto's self-check takes per op and backend (float32, bfloat16), and why a
#                 failed C++ argument check whose message holds a number kills the process there
#                 (tests/cuda/probe_check_crash.sh: variants and a cuda-gdb backtrace)
#   test          the GPU suite: tests/cuda, tests/ops, tests/nn (the Triton AOT compiles are CI's)
#   memcheck      compute-sanitizer memcheck on the CUDA kernel tests, only when at least
#                 MEMCHECK_MIN_S seconds are left for it (else left out, and the plan says so)
# Op shapes come from benchmarks/preset_shapes.json (no 130M-parameter model is built for them).
SESSION_STEPS=(
  "build 180"
  "bench-power 30"
  "bench-dw 40"
  "bench-bn-se 55"
  "bench-compile 35"
  "bench-model 45"
  "probes 25"
  "test 70"
)
MEMCHECK_MIN_S=90
GRACE_S=15  # a step is sent SIGINT at its limit, then killed GRACE_S seconds later

session_deadline() { echo "${GPU_SESSION_S:-480}"; }

# Seconds the caps of SESSION_STEPS add up to.
session_steps_total() {
  local total=0 entry
  for entry in "${SESSION_STEPS[@]}"; do total=$((total + ${entry#* })); done
  echo "$total"
}

# "name cap" lines of the session's plan (memcheck gets what the other caps leave, when that is enough).
session_plan_lines() {
  local left
  left=$(($(session_deadline) - $(session_steps_total)))
  printf '%s\n' "${SESSION_STEPS[@]}"
  if [ "$left" -ge "$MEMCHECK_MIN_S" ]; then echo "memcheck $left"; fi
}

session_plan() {
  local deadline used=0 name cap total
  deadline=$(session_deadline)
  total=$(session_steps_total)
  printf '%-14s %6s %8s %10s\n' step cap ends_at left_after
  while read -r name cap; do
    used=$((used + cap))
    printf '%-14s %6d %8d %10d\n' "$name" "$cap" "$used" $((deadline - used))
  done < <(session_plan_lines)
  if [ $((deadline - total)) -lt "$MEMCHECK_MIN_S" ]; then
    echo "memcheck left out: $((deadline - total)) s left after the other steps, it needs $MEMCHECK_MIN_S"
  fi
  if [ "$used" -gt "$deadline" ]; then
    echo "plan error: the caps add up to $used s, over the deadline of $deadline s" >&2
    return 1
  fi
}

bench_step() {  # benchmarks.run stopping itself 15 s before the step's limit, so that it writes its rows
  python3 -m benchmarks.run --out benchmarks/results --no-report \
    --max-minutes "$(python3 -c "print(max(($STEP_LIMIT - 15) / 60, 0.1))")" "$@" >> "$logs/bench.log" 2>&1
}

session_step() {  # the command of one step of the plan
  case "$1" in
    build) TORCH_CUDA_ARCH_LIST=9.0 PIP_NO_INDEX=1 build ;;
    bench-power) bench_step --sections ops --ops power_iteration --sets cifar10 --providers stack_bmm,cuda,triton ;;
    bench-dw) bench_step --sections ops --ops depthwise_conv2d --sets target \
      --providers reference,reference_cl,cuda,triton ;;
    bench-bn-se) bench_step --sections ops --ops bn_swish,squeeze_excite --sets cifar10,celeba64 \
      --providers reference,cuda,triton ;;
    bench-compile) bench_step --sections ops --ops bn_swish --sets cifar10 --providers compile ;;
    bench-model) bench_step --sections model --presets cifar10 --dtypes float32 \
      --providers reference,cuda,triton,torch --no-max-batch ;;
    probes) { python3 -c "import json, torch, nvae_fast
print(json.dumps(nvae_fast.run_selfchecks('cuda', (torch.float32, torch.bfloat16)), indent=1))"
      bash tests/cuda/probe_check_crash.sh; } > "$logs/probes.txt" 2>&1 ;;
    test) NVAE_FAST_TEST_DEADLINE=$(($(date +%s) + STEP_LIMIT - 20)) python3 -m pytest -v -rfE -n "${NVAE_FAST_TEST_WORKERS:-12}" --dist loadgroup -p no:cacheprovider \
      --junitxml="$logs/test.xml" --ignore=tests/cuda/test_emulation.py tests/cuda tests/ops tests/nn \
      > "$logs/test.log" 2>&1 ;;
    memcheck) env TOOLS=memcheck bash tests/cuda/run_sanitizer.sh -k "float32 and contiguous" \
      > "$logs/sanitizer.log" 2>&1 ;;
    *) echo "unknown session step $1" >&2; return 2 ;;
  esac
}

# Runs the plan. A step's time limit is the deadline minus the seconds already spent minus the caps of
# the steps after it, so each step keeps at least its cap. Records "name rc seconds" in
# $logs/session.txt (rc 124 or 130: stopped at its limit).
session() {
  local deadline names=() caps=() name cap i j later limit start rc
  deadline=$(session_deadline)
  session_plan > "$logs/session-plan.txt" || { cat "$logs/session-plan.txt"; exit 1; }
  while read -r name cap; do names+=("$name"); caps+=("$cap"); done < <(session_plan_lines)
  : > "$logs/session.txt"
  nvidia-smi > "$logs/nvidia-smi.txt" 2>&1 || true
  export logs OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} PIP_NO_INDEX=1
  export -f build bench_step session_step
  trap session_end EXIT
  for i in "${!names[@]}"; do
    later=0
    for ((j = i + 1; j < ${#names[@]}; j++)); do later=$((later + caps[j])); done
    limit=$((deadline - SECONDS - later))
    if [ "$limit" -lt 20 ]; then
      echo "${names[i]} skipped 0 (${limit}s left)" >> "$logs/session.txt"
      continue
    fi
    start=$SECONDS rc=0
    STEP_LIMIT=$limit timeout --signal=INT --kill-after="$GRACE_S" $((limit - GRACE_S)) \
      bash -c 'session_step "$1"' _ "${names[i]}" || rc=$?
    echo "${names[i]} $rc $((SECONDS - start))" >> "$logs/session.txt"
    if [ "${names[i]}" = build ] && ! python3 -c "import nvae_fast._C" 2>/dev/null; then
      echo "build failed: see build.log" | tee -a "$logs/session.txt"
      exit 1
    fi
  done
}

# What a session leaves in $OUT besides the logs: the results archive, the summary and target table of
# what was measured, and the built extension (so that a second call can carry it instead of building).
session_end() {
  local latest
  latest=$(find benchmarks/results -mindepth 1 -maxdepth 1 -type d ! -name '*-smoke' | sort | tail -n 1)
  if [ -n "$latest" ]; then
    python3 -m benchmarks.summarize > /dev/null 2>&1 || true
    python3 -m benchmarks.auto_order "$latest" > "$logs/auto_order.txt" 2>&1 || true
  fi
  pack_results
  cat "$logs/session.txt"
  grep -E '^(FAILED|ERROR) ' "$logs/test.log" 2>/dev/null | head -n 40 || true
  tail -n 3 "$logs/test.log" 2>/dev/null || true
  cat "$logs/auto_order.txt" 2>/dev/null || true
  # The device machine returns at most 8 files: the logs travel as one archive.
  (cd "$logs" && find . -maxdepth 1 -type f ! -name '*.tar.gz' ! -name session.txt -printf '%f\n' \
    | tar -czf logs.tar.gz --remove-files -T -) || true
  cp nvae_fast/_C*.so "$logs/" 2>/dev/null || true
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
    if [ "${2:-}" = --plan ]; then session_plan; else session; fi
    ;;
  *)
    sed -n '2,11p' "$0"
    exit 2
    ;;
esac
