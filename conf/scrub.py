"""Config of the `scrub` stage (config key `pii`): which PII to find and replace, and the leak gate."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

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

# The default `scrub.phone_regions`: the regions of the major locales (by speakers and by web text).
MAJOR_PHONE_REGIONS: tuple[str, ...] = (
    "US", "CA", "GB", "IE", "AU", "NZ", "IN", "PK", "ZA", "NG", "DE", "AT", "CH", "FR", "BE", "NL",
    "LU", "IT", "ES", "PT", "BR", "MX", "AR", "CO", "CL", "PE", "PL", "CZ", "SK", "HU", "RO", "BG",
    "HR", "GR", "SE", "NO", "DK", "FI", "RU", "UA", "TR", "IL", "EG", "SA", "AE", "JP", "CN", "KR",
    "TW", "HK", "SG", "MY", "ID", "PH", "TH", "VN",
)  # fmt: skip


class ScrubConfig(StageConfig):
    NOT_RESULT_AFFECTING: ClassVar[frozenset[str]] = frozenset({"workers", "batch_docs"})

    entities: list[EntityType] = Field(
        default_factory=lambda: list(_ENTITIES_BY_PRIORITY),
        min_length=1,
        description="Entity types to find and replace with `<TYPE>`.",
    )
    phone_regions: list[str] = Field(
        default_factory=lambda: list(MAJOR_PHONE_REGIONS),
        description="Regions whose national formats are recognised for numbers written without +country "
        "code ([] or ['ZZ']: only +numbers). The legacy key `phone_region` (one region, or a comma-separated "
        "list) sets this too.",
    )
    phone_leniency: Literal["possible", "valid", "strict_grouping", "exact_grouping"] = Field(
        "valid",
        description="Evidence a national number needs (number validity, shape, context words): possible "
        "< valid < strict_grouping (valid + phone-like digit groups) < exact_grouping.",
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

    @model_validator(mode="before")
    @classmethod
    def _legacy_region(cls, data: Any) -> Any:
        """`phone_region: GB` (the single-region key of earlier versions) means `phone_regions: [GB]`;
        either may be a comma-separated string."""
        if isinstance(data, dict) and "phone_region" in data:
            data = dict(data)
            legacy = data.pop("phone_region")
            if "phone_regions" in data:
                raise ValueError("set scrub.phone_regions or the legacy scrub.phone_region, not both")
            data["phone_regions"] = legacy
        if isinstance(data, dict) and isinstance(data.get("phone_regions"), str):
            data = {
                **data,
                "phone_regions": data["phone_regions"].split(","),
            }  # `--set scrub.phone_regions=GB,FR`
        return data

    @field_validator("phone_regions")
    @classmethod
    def _regions(cls, v: list[str]) -> list[str]:
        import phonenumbers

        out: list[str] = []
        for region in (r.strip().upper() for r in v):
            if region == "ZZ" or not region or region in out:
                continue
            if region not in phonenumbers.SUPPORTED_REGIONS:
                raise ValueError(
                    f"unknown phone region {region!r}: use two-letter regions such as US, GB, DE (ZZ: none)"
                )
            out.append(region)
        return out
