"""The `dedup` stage (exact + MinHash LSH near-duplicate removal) and its standalone CLI.

`core` holds the detection shared by the stage (`stage.dedup`) and `lmforge dedup` (`cli`).
"""

from tasks.dedup.core import normalize, text_key
from tasks.dedup.stage import STAGE_VERSION, dedup, gate

__all__ = ["STAGE_VERSION", "dedup", "gate", "normalize", "text_key"]
