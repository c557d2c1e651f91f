# The two commands of the README. Both install what is missing first (scripts/setup.sh).
PYTHON ?= python3

.PHONY: setup train test

setup:
	bash scripts/setup.sh

# Main job: a short memory-lean NVAE training on the embedded digits data, with samples and a checkpoint.
train: setup
	nvae-fast train --preset digits --out runs/digits

# Every test (CPU: Triton kernels in the interpreter plus ahead-of-time compiles; GPU tests skip without a GPU)
# and the benchmark suite in smoke mode.
test: setup
	$(PYTHON) -m pytest -q
