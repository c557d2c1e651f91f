#!/usr/bin/env bash
# Install what nvae_fast needs and build it (with the CUDA extension when a CUDA toolkit is present).
# Idempotent: packages already installed at a suitable version are kept.
#   NVAE_FAST_TORCH   torch requirement to install when torch is missing (default torch==2.14.1, the CUDA build)
#   NVAE_FAST_BUILD_CUDA=0/1   skip / force the CUDA extension (default: build it when possible)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
pip_install() { "$PY" -m pip install --disable-pip-version-check --root-user-action=ignore -q "$@"; }

if ! "$PY" - <<'PYCHECK' 2>/dev/null; then
import torch, sys
major, minor = (int(p) for p in torch.__version__.split(".")[:2])
sys.exit(0 if (2, 11) <= (major, minor) <= (2, 14) else 1)
PYCHECK
  echo "setup: installing ${NVAE_FAST_TORCH:-torch==2.14.1}"
  pip_install "${NVAE_FAST_TORCH:-torch==2.14.1}"
fi
"$PY" -c "import triton" 2>/dev/null || pip_install "triton>=3.6,<3.10"
pip_install -r requirements.txt

# torchvision and timm (the EfficientNet/MobileNet definitions nvae_fast.patch is tested on), each only when
# missing and with --no-deps, so the installed torch is never replaced; torchvision is the release paired
# with that torch (2.11 -> 0.26 ... 2.14 -> 0.29), timm's pure-Python requirements come under a torch pin.
torch_version=$("$PY" -c "import torch; print(torch.__version__.split('+')[0])")
if ! "$PY" -c "import torchvision" 2>/dev/null; then
  vision_minor=$(( $(echo "$torch_version" | cut -d. -f2) + 15 ))
  echo "setup: installing torchvision==0.${vision_minor}.* (for torch ${torch_version})"
  pip_install --no-deps "torchvision==0.${vision_minor}.*"
fi
if ! "$PY" -c "import timm" 2>/dev/null; then
  echo "setup: installing timm"
  pip_install --no-deps timm
  pin=$(mktemp) && echo "torch==${torch_version}" > "$pin"
  for dep in huggingface_hub safetensors yaml:pyyaml; do
    "$PY" -c "import ${dep%%:*}" 2>/dev/null || pip_install -c "$pin" "${dep##*:}"
  done
  rm -f "$pin"
fi

# (setup.py finds the CUDA toolkit: CUDA_HOME, CUDA_PATH, the nvcc on PATH, /usr/local/cuda)
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0+PTX}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
# Rebuild only when the build inputs changed or this checkout is not the one installed.
stamp=build/setup.stamp
# (csrc/ itself: csrc/emulation/ is not part of this build, nvae_fast.cuda.emulation builds it on use)
inputs=$(find setup.py csrc -maxdepth 1 -type f | sort | xargs cat | sha256sum | cut -d' ' -f1)-${NVAE_FAST_BUILD_CUDA:-auto}-${TORCH_CUDA_ARCH_LIST}
installed=$(cd / && "$PY" -c "import nvae_fast, os; print(os.path.dirname(os.path.dirname(os.path.abspath(nvae_fast.__file__))))" 2>/dev/null || true)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$inputs" ] && [ "$installed" = "$PWD" ]; then
  echo "setup: nvae_fast is built and installed from this checkout (build/setup.stamp is current)"
else
  echo "setup: building nvae_fast (CUDA extension: ${NVAE_FAST_BUILD_CUDA:-auto}, arch ${TORCH_CUDA_ARCH_LIST})"
  pip_install --no-build-isolation --no-deps --use-pep517 -e .
  mkdir -p build && echo "$inputs" > "$stamp"
fi
"$PY" -c "import nvae_fast, json; print(json.dumps(nvae_fast.backend_info()['backends']))"
