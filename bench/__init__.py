"""Benchmarks. A package so a worker subprocess can import `bench.noop_runner` from a
registry file (with the repository root on its PYTHONPATH)."""
