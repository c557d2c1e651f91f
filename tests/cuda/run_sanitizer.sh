#!/usr/bin/env bash
# Runs the CUDA kernel tests under NVIDIA compute-sanitizer: memcheck (out-of-bounds and misaligned
# accesses, launch errors) and racecheck (shared-memory hazards: tile copies, block reductions).
#
# Usage, from anywhere, on a machine with a GPU where the extension is built:
#   tests/cuda/run_sanitizer.sh                      # every test of test_cuda_kernels.py
#   tests/cuda/run_sanitizer.sh -k float32           # extra arguments go to pytest
#   TOOLS="memcheck racecheck initcheck synccheck" tests/cuda/run_sanitizer.sh
#   SANITIZER_ARGS="--kernel-name kns=nvae_fast" tests/cuda/run_sanitizer.sh   # extra sanitizer options, here:
#                                                    # check only the extension's kernels (see compute-sanitizer --help)
# Exits non-zero on the first tool that reports an error. PyTorch's caching allocator is disabled so
# that memcheck sees the true bounds of every allocation.
set -euo pipefail
cd "$(dirname "$0")/../.."
SANITIZER=${COMPUTE_SANITIZER:-$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)}
TOOLS=${TOOLS:-"memcheck racecheck"}
export PYTORCH_NO_CUDA_MEMORY_CACHING=1
for tool in $TOOLS; do
  echo "== compute-sanitizer --tool $tool"
  # shellcheck disable=SC2086  # SANITIZER_ARGS holds several words
  "$SANITIZER" --tool "$tool" --error-exitcode 1 --target-processes all ${SANITIZER_ARGS:-} \
    "${PYTHON:-python3}" -m pytest -x -q -p no:cacheprovider tests/cuda/test_cuda_kernels.py "$@"
done
