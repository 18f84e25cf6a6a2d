"""Benchmarks: each stage against the baseline a user would otherwise pick, side by side (`make bench`)."""
