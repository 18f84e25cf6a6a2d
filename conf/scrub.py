"""Config of the `scrub` stage (config key `pii`): which PII to find and replace, and the leak gate."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from conf.base import StageConfig

EntityType = Literal["EMAIL_ADDRESS", "PHONE_NUMBER", "IP_ADDRESS", "CREDIT_CARD", "US_SSN", "IBAN_CODE"]
# Overlap ties (same length) go to the entity listed first: the most specific formats first.
_ENTITIES_BY_PRIORITY: tuple[EntityType, ...] = (
    "EMAIL_ADDRESS",
    "IBAN_CODE",
    "CREDIT_CARD",
    "US_SSN",
    "IP_ADDRESS",
    "PHONE_NUMBER",
)
# The same, as plain strings: the detector looks entity types up by whatever string a span carries.
ENTITY_TYPES: tuple[str, ...] = _ENTITIES_BY_PRIORITY


class ScrubConfig(StageConfig):
    NOT_RESULT_AFFECTING: ClassVar[frozenset[str]] = frozenset({"workers", "batch_docs"})

    entities: list[EntityType] = Field(
        default_factory=lambda: list(_ENTITIES_BY_PRIORITY),
        min_length=1,
        description="Entity types to find and replace with `<TYPE>`.",
    )
    phone_region: str = Field(
        "US",
        description="Region assumed for phone numbers written without +country code ('ZZ': only +numbers).",
    )
    phone_leniency: Literal["possible", "valid", "strict_grouping", "exact_grouping"] = Field(
        "strict_grouping",
        description="phonenumbers Leniency: how sure the matcher must be that digits are a phone number.",
    )
    phone_bare_digits: bool = Field(
        False, description="Also take unformatted digit runs without '+' (4155552671) as phone numbers."
    )
    phone_min_digits: int = Field(
        7, ge=3, le=17, description="Digit runs shorter than this never reach the phone matcher."
    )
    samples_per_type: int = Field(
        5, ge=0, le=1000, description="Redaction samples (PII masked) kept per type in the report."
    )
    sample_context: int = Field(40, ge=0, le=500, description="Characters of context each side of a sample.")
    max_pii_left: int = Field(
        0, ge=0, description="Quality gate: fail if the rescan of the output finds more PII than this."
    )
    workers: int = Field(1, ge=1, le=256, description="Worker processes (1: scrub in-process).")
    batch_docs: int = Field(256, gt=0, description="Documents sent to a worker at a time.")

    @field_validator("entities")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"entity types listed twice: {v}")
        return v

    @field_validator("phone_region")
    @classmethod
    def _region(cls, v: str) -> str:
        import phonenumbers

        v = v.upper()
        if v != "ZZ" and v not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"unknown phone region {v!r}: use a two-letter region such as US, GB, DE, or ZZ")
        return v
