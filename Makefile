# The two commands of the README. Both install what is missing first (scripts/setup.sh).
PYTHON ?= python3

.PHONY: setup train test

setup:
	bash scripts/setup.sh

# Main job: a short memory-lean NVAE training on the embedded digits data, with samples and a checkpoint.
# Run again, it continues runs/digits where Ctrl-C left it, or says that the run is complete; TRAIN_ARGS
# adds train options, e.g. TRAIN_ARGS="--steps 800" to train a finished run longer.
TRAIN_ARGS ?=
train: setup
	nvae-fast train --preset digits --out runs/digits --auto-resume $(TRAIN_ARGS)

# Every test (CPU: Triton kernels in the interpreter plus ahead-of-time compiles, CUDA kernels in their
# emulation) and the benchmark suite in smoke mode, in TEST_WORKERS processes (pytest-xdist; tests marked
# xdist_group share one). It fails at once, naming the reason, when the triton or cuda backend cannot run
# (tests/backend_gate.py), so that their tests are never skipped wholesale.
TEST_WORKERS ?= 2
test: setup
	NVAE_FAST_REQUIRE_BACKENDS=triton,cuda $(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup
