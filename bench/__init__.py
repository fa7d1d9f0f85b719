"""skmsg benchmarks: speed goals measured side by side with their baselines.

Run them with ``python bench/run.py [NAME...] [--quick]``; each ``bench_*.py``
module exposes ``BENCHMARKS``, and :mod:`bench._harness` holds the figure record
and the timing helper they share.
"""
