"""Config of `lmforge serve`: where it listens, request limits, decoding defaults and guardrails.

Not a stage (it produces no artifacts), so it is not part of the pipeline config: `lmforge serve`
builds it from its flags, an optional YAML file (`--config`) and `--set key=value` overrides.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator

from conf.base import StageConfig
from conf.scrub import ENTITY_TYPES, EntityType

# Topics the server refuses by default: requests for serious harm. Each is a case-insensitive regular
# expression searched in the prompt (after PII masking) and in the completion.
DEFAULT_BLOCKED_PATTERNS: tuple[str, ...] = (
    r"\b(build|make|assemble)\s+(a\s+)?(bomb|pipe\s*bomb|explosive)",
    r"\bsynthesi[sz]e\s+(meth|methamphetamine|sarin|nerve\s+agent)",
    r"\b(child\s+sexual|csam)\b",
    r"\bkill\s+(myself|yourself)\b",
)
REFUSAL = "I can't help with that request."


class GuardrailsConfig(StageConfig):
    """What the serving path checks in every prompt and completion."""

    enabled: bool = Field(True, description="Master switch; off serves the model's raw output.")
    mask_pii: bool = Field(True, description="Replace PII in prompts and completions with <TYPE>.")
    pii_entities: list[EntityType] = Field(
        default_factory=lambda: list(ENTITY_TYPES),  # type: ignore[arg-type]
        min_length=1,
        description="Entity types the project's scrubber (tasks/scrub) masks.",
    )
    blocked_terms: list[str] = Field(
        default_factory=list, description="Words or phrases (case-insensitive, whole words) to refuse."
    )
    blocked_patterns: list[str] = Field(
        default_factory=lambda: list(DEFAULT_BLOCKED_PATTERNS),
        description="Regular expressions (case-insensitive) of topics to refuse.",
    )
    refusal: str = Field(REFUSAL, min_length=1, description="The answer to a refused request.")

    @field_validator("blocked_patterns")
    @classmethod
    def _compiles(cls, v: list[str]) -> list[str]:
        import re

        for i, pattern in enumerate(v):
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"blocked_patterns[{i}] {pattern!r} is not a regular expression: {e}") from e
        return v

    @field_validator("blocked_terms")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if any(not t.strip() for t in v):
            raise ValueError("blocked_terms must not contain empty strings")
        return v


class ServeConfig(StageConfig):
    NOT_RESULT_AFFECTING: ClassVar[frozenset[str]] = frozenset()

    model: str = Field(
        ...,
        min_length=1,
        description="A model folder, a stage folder holding model/ (e.g. artifacts/export/<hash12>), "
        "or an MLflow registry URI such as models:/lmforge-tiny@champion.",
    )
    model_id: str | None = Field(None, description="Name in /v1/models and responses (default: derived).")
    variant: str = Field(
        "full",
        pattern="^(full|int8)$",
        description="full precision, or int8 weight-only (the export's int8/, else torchao at load).",
    )
    host: str = Field("127.0.0.1", description="Bind address; loopback unless you mean to expose it.")
    port: int = Field(8000, ge=0, le=65535, description="0 picks a free port.")
    max_body_bytes: int = Field(65536, gt=0, description="Larger request bodies get 413.")
    max_tokens_limit: int = Field(512, gt=0, description="Largest max_tokens a request may ask for.")
    default_max_tokens: int = Field(64, gt=0, description="max_tokens when a request gives none.")
    max_prompt_tokens: int = Field(448, gt=0, description="Longer prompts get 400.")
    max_concurrent_requests: int = Field(
        8, gt=0, description="Generations running or queued at once; more get 429."
    )
    max_beams: int = Field(8, gt=0, description="Largest n_beams (beam search) a request may ask for.")
    max_stop_sequences: int = Field(4, gt=0)
    threads: int | None = Field(None, gt=0, description="torch intra-op threads (default: torch's).")
    guardrails: GuardrailsConfig = Field(default_factory=GuardrailsConfig)

    @field_validator("default_max_tokens")
    @classmethod
    def _default_within_limit(cls, v: int, info) -> int:  # type: ignore[no-untyped-def]
        limit = info.data.get("max_tokens_limit")
        if limit is not None and v > limit:
            raise ValueError(f"default_max_tokens ({v}) exceeds max_tokens_limit ({limit})")
        return v
