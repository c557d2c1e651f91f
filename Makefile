# The two commands of the README. Both install what is missing first (scripts/setup.sh).
PYTHON ?= python3

.PHONY: setup train test

setup:
	bash scripts/setup.sh

# Main job: a short memory-lean NVAE training on the embedded digits data, with samples and a checkpoint.
train: setup
	nvae-fast train --preset digits --out runs/digits

# Every test (CPU: Triton kernels in the interpreter plus ahead-of-time compiles; GPU tests skip without a GPU)
# and the benchmark suite in smoke mode, in TEST_WORKERS processes (pytest-xdist; tests marked
# xdist_group share one).
TEST_WORKERS ?= 2
test: setup
	$(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup
