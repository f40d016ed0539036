"""Benchmarks: `make bench` runs bench.run and writes bench/report.json."""
