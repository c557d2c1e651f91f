#!/usr/bin/env bash
# On a GPU machine with the extension built: finds why a failed argument check of nvae_fast._C kills the
# process when its message formats an integer or a shape (on an H200 with torch 2.11.0+cu130, triton
# 3.6.0 and an nvcc 13.0 build, every such check of test_cuda_extension.py ends its pytest worker with
# SIGSEGV), while a check whose message holds only names, dtypes and devices raises RuntimeError as it
# should. The same calls raise RuntimeError on the CPU machine's build (torch 2.14.1, triton 3.8).
#
# Each variant runs in a process of its own and prints its exit status (0: RuntimeError caught,
# 139: segmentation fault); the last runs the crashing call under cuda-gdb (a host debugger there) for the
# native backtrace. Output: stdout, about 10 s.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
probe() {  # probe NAME PYTHON-CODE
  local rc=0
  "$PY" -c "$2" > /dev/null 2>&1 || rc=$?
  echo "probe $1: exit $rc"
}
# the call, then exit 0 on RuntimeError (printing it), 3 when nothing was raised
code() {  # code CALL [PRELUDE]
  printf 'import sys, torch\n%s\ntry:\n    %s\nexcept RuntimeError as e:\n    print(e)\n    sys.exit(0)\nsys.exit(3)\n' "${2:-}" "$1"
}
INT_CALL='import nvae_fast._C; torch.ops.nvae_fast.bn_swish_stats(torch.randn(2, 3, 4))'
DTYPE_CALL='import nvae_fast._C; torch.ops.nvae_fast.bn_swish_stats(torch.ones(2, 3, 4, 5, dtype=torch.int32))'
TORCH_INT_CALL='torch.empty(2, 3).view(7)'
NO_TRITON='sys.modules["triton"] = None  # nvae_fast then probes triton as unavailable'
probe integer-message "$(code "$INT_CALL")"
probe integer-message-without-triton "$(code "$INT_CALL" "$NO_TRITON")"
probe dtype-message "$(code "$DTYPE_CALL")"
probe torch-own-integer-message "$(code "$TORCH_INT_CALL")"
if command -v cuda-gdb > /dev/null; then
  echo "== cuda-gdb backtrace of integer-message"
  timeout 60 cuda-gdb -q -batch -ex run -ex bt --args "$PY" -c "$(code "$INT_CALL")" 2>&1 | grep -E '^#|signal' | head -n 40
fi
