"""GPU benchmark suites of nvae_fast (pytest-benchmark based), with a CPU smoke mode for CI.

Run ``python -m benchmarks.run --out benchmarks/results`` on a GPU (see ``benchmarks/README.md``).
Modules, one job each:

- :mod:`.settings`   what to run (options, environment variables, smoke mode)
- :mod:`.env`        device name, versions, git commit, measured copy bandwidth
- :mod:`.timing`     CUDA-event timing with warm-up and L2 flush; peak memory
- :mod:`.traffic`    the minimum-traffic model behind the bandwidth numbers
- :mod:`.shapes`     the op shapes of the NVAE presets, the size sweeps, the target shapes
- :mod:`.model_shapes` the same shapes derived from ``nvae_fast.model`` with forward hooks
- :mod:`.inputs`     random inputs per op
- :mod:`.providers`  the implementations compared (nvae_fast backends, eager, torch.compile, baselines)
- :mod:`.measure`    one op case -> result rows
- :mod:`.train_step` the whole-model training-step benchmark
- :mod:`.results`    the row schema, validation, JSON/CSV files
- :mod:`.targets`    the performance targets and their evaluation
- :mod:`.run`, :mod:`.plot`, :mod:`.summarize`  command-line entry points
"""
