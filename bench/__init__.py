"""Benchmarks of the serving stack (``make bench``, ``python -m bench``).

``bench.loadgen`` drives HTTP load (wrk, or a Python fallback), ``bench.stack``
starts local workers and gateways, ``bench.inprocess`` measures the model's
limit without HTTP, ``bench.report`` writes the JSON, the Markdown table and the
plot. docs/benchmarks.md holds the latest full run; docs/decisions/ what the measurements decided.
"""
