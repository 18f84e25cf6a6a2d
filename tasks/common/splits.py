"""Deterministic train/eval splits by group (e.g. by module), so evaluation prompts are unseen."""

from __future__ import annotations

import hashlib


def is_eval_module(module: str, eval_fraction: float, seed: int = 0) -> bool:
    """True for roughly `eval_fraction` of modules, chosen by hash: stable across runs and machines.

    Grouping by the top two levels of the dotted name keeps a package's submodules together, so
    near-identical docstrings of sibling modules do not straddle the split.
    """
    group = ".".join(module.split(".")[:2])
    digest = hashlib.sha256(f"{seed}:{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < eval_fraction
