#!/usr/bin/env bash
# Runs the CUDA kernel tests in the CPU emulation built with AddressSanitizer
# (NVAE_FAST_CUDA_EMULATE=asan): every read or write of a kernel outside the memory of its tensors stops
# the run with a report that names the kernel. The CPU counterpart of run_sanitizer.sh's memcheck, for
# machines without a GPU; it finds nothing about races (see csrc/emulation/emulation.h).
#
# Usage, from anywhere, in a source checkout with nvae_fast installed (the first run builds the
# sanitized kernels into the emulation's build directory, ~/.cache/nvae_fast/cuda-emulation by default,
# about a minute):
#   tests/cuda/run_emulated_asan.sh                      # every test of test_cuda_kernels.py (2 minutes)
#   tests/cuda/run_emulated_asan.sh -k float32           # extra arguments go to pytest
#   tests/cuda/run_emulated_asan.sh --command CMD ARG..  # any other command under the sanitizer
# The sanitizer's runtime (and the C++ runtime, whose exceptions it intercepts) must be loaded before
# Python; leak checking is off (the interpreter keeps its memory to the end).
set -euo pipefail
cd "$(dirname "$0")/../.."
CXX=${CXX:-c++}
preload="$("$CXX" -print-file-name=libasan.so) $("$CXX" -print-file-name=libstdc++.so)"
for lib in $preload; do
  [ -e "$lib" ] || { echo "run_emulated_asan.sh: $CXX has no $lib (AddressSanitizer runtime)" >&2; exit 2; }
done
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0}
if [ "${1:-}" = "--command" ]; then
  shift
  LD_PRELOAD="$preload" "$@"
else
  NVAE_FAST_CUDA_EMULATE=asan LD_PRELOAD="$preload" "${PYTHON:-python3}" -m pytest -q -p no:cacheprovider \
    tests/cuda/test_cuda_kernels.py "$@"
fi
