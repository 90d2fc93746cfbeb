"""Benchmarks: ``python -m msdacore bench``.

One harness for every timing msdacore does, each module with one job:

- ``constants``: repeat counts, warm-up, time limits, passes, JSON schema version;
- ``timing``: wall-clock and CUDA-event timing, the statistics of a measurement;
- ``memory``: peak resident-set increase of one call (Linux);
- ``report``: the machine's description, the JSON envelope and its writing, table cells;
- ``problems``: realistic inputs for a configuration and the callables being timed
  (msdacore and the grid_sample composition);
- ``cpu``: ``python -m msdacore bench`` (CPU) and the timings of ``python -m msdacore demo``;
- ``cuda``: ``python -m msdacore bench --device cuda``;
- ``command``: the options of ``bench`` and the command itself;
- ``jax``: ``python -m msdacore.bench.jax``, msdacore.jax against the plain-JAX gather
  composition under jax.jit (docs/jax.md);
- ``transformers_model``: ``python -m msdacore.bench.transformers_model``, a transformers
  Deformable DETR forward with and without msdacore.

msdacore and the grid_sample composition (msdacore.grid_sample) run in the same process,
on the same inputs and with the same thread count. Absolute times on a shared machine
drift from run to run; the ratios, measured side by side, are the stable quantity
(docs/benchmarks.md "Benchmark configurations"). Nothing here needs torch at import time.
"""
