"""Prefect wiring: the stage registry, the stage task, the lifecycle flow and sub-flows, the CLI."""
