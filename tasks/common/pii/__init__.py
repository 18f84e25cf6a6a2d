"""PII detection and masking, shared by the `scrub` stage (which replaces PII in every document) and the
stages before it (which mask the samples, ids and messages they log; see `mask`).

`entities` holds the e-mail, IP, card, SSN and IBAN detectors, `phones` the phone numbers of many
regions, `guards` the context checks against look-alikes, `scrubber` the `Scrubber` that runs them all.
"""

from tasks.common.pii.entities import card_ok, iban_ok, luhn_ok, ssn_ok
from tasks.common.pii.mask import mask_id, mask_record, mask_sample, mask_text, mask_value
from tasks.common.pii.scrubber import Scrubber, Span, placeholder, redact, resolve, scrubbed_offsets

__all__ = [
    "Scrubber",
    "Span",
    "card_ok",
    "iban_ok",
    "luhn_ok",
    "mask_id",
    "mask_record",
    "mask_sample",
    "mask_text",
    "mask_value",
    "placeholder",
    "redact",
    "resolve",
    "scrubbed_offsets",
    "ssn_ok",
]
