"""Benchmarks: ``python -m benchmarks.run`` writes ``benchmarks/RESULTS.md`` (see ``run.py``)."""
