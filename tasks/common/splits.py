"""Deterministic, seeded hash ranks and the train/eval splits built on them (e.g. by module).

A hash of `seed:key` is the same on every run, machine and corpus order, and (unlike `hash()`) is not
salted per process, so a sample or split chosen by it is reproducible and needs no shared state.
Every stage that samples or splits by hash uses these: collect's capped sources, align_data's prompt
phrasing, pair sampling and splits, the tokenizer's validation split.
"""

from __future__ import annotations

import hashlib


def hash_rank(key: str, seed: int = 0) -> int:
    """A stable pseudo-random 64-bit rank of `key` (sha256 of `seed:key`)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big")


def hash_fraction(key: str, seed: int = 0) -> float:
    """`hash_rank` scaled to [0, 1): `hash_fraction(k) < p` picks a stable share `p` of keys."""
    return hash_rank(key, seed) / 2**64


def is_eval_module(module: str, eval_fraction: float, seed: int = 0) -> bool:
    """True for roughly `eval_fraction` of modules, chosen by hash: stable across runs and machines.

    Grouping by the top two levels of the dotted name keeps a package's submodules together, so
    near-identical docstrings of sibling modules do not straddle the split.
    """
    group = ".".join(module.split(".")[:2])
    return hash_fraction(group, seed) < eval_fraction
