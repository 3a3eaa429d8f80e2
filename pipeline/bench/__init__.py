"""Speed benchmarks: `python -m pipeline.bench` (see __main__.py)."""
