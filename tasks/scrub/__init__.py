"""Stage `scrub` (config key `pii`): find PII with validators, replace it with `<TYPE>`, rescan the output.

`detect` holds the detectors (and the false-positive trade-offs), `stage` the pipeline stage and its
leak-check gate, `cli` the standalone `lmforge scrub IN.jsonl OUT.jsonl` tool.
"""

from tasks.scrub.detect import Scrubber, Span
from tasks.scrub.stage import STAGE_VERSION, gate, scrub

__all__ = ["STAGE_VERSION", "Scrubber", "Span", "gate", "scrub"]
