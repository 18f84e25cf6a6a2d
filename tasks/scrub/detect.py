"""PII detection for the `scrub` stage and `lmforge scrub`: the detectors live in `tasks.common.pii`
(the stages before `scrub` mask their samples with them too); this module names what scrub uses."""

from __future__ import annotations

from tasks.common.pii.entities import ISSUERS, card_ok, iban_ok, luhn_ok, ssn_ok
from tasks.common.pii.scrubber import Scrubber, Span, placeholder, redact, resolve, scrubbed_offsets

__all__ = [
    "ISSUERS",
    "Scrubber",
    "Span",
    "card_ok",
    "iban_ok",
    "luhn_ok",
    "placeholder",
    "redact",
    "resolve",
    "scrubbed_offsets",
    "ssn_ok",
]
