"""Config of the `filter` stage: heuristic quality filters in the spirit of Gopher (Rae et al. 2021) and C4.

Every threshold can be switched off with `null` (an empty mapping / list for the n-gram and blocklist
filters). The defaults are Gopher's, loosened where docstrings differ from web prose: docstrings are
short, quote code (long dotted names, `#` comments, `...` doctest prompts) and list parameters.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, model_validator

from conf.base import StageConfig

# A deliberately small default: strong profanity and sexual terms, matched as whole words,
# case-insensitively. Real web corpora want a full list (e.g. LDNOOBW) via `filter.blocklist`.
DEFAULT_BLOCKLIST = (
    "fuck", "fucking", "fucked", "motherfucker", "shit", "bullshit", "cunt", "dickhead", "asshole",
    "bitch", "whore", "slut", "porn", "porno", "pornography", "blowjob", "handjob", "cumshot", "dildo",
    "hentai",
)  # fmt: skip


class FilterConfig(StageConfig):
    NOT_RESULT_AFFECTING: ClassVar[frozenset[str]] = frozenset({"workers"})

    min_words: int | None = Field(10, ge=1, description="Drop documents with fewer words (Gopher: 50).")
    max_words: int | None = Field(100_000, ge=1, description="Drop documents with more words (Gopher: 100k).")
    min_mean_word_length: float | None = Field(3.0, ge=0, description="Gopher: 3 characters.")
    max_mean_word_length: float | None = Field(12.0, ge=0, description="Gopher: 10; code names run longer.")
    max_symbol_word_ratio: float | None = Field(
        0.1,
        ge=0,
        description="Max (`#` + ellipses) per word (Gopher: 0.1); doctest `...` prompts are not counted.",
    )
    max_digit_ratio: float | None = Field(
        0.25, ge=0, le=1, description="Max share of non-space characters that are digits."
    )
    min_alpha_word_ratio: float | None = Field(
        0.5, ge=0, le=1, description="Min share of words with a letter (Gopher: 0.8; docstrings quote code)."
    )
    max_bullet_lines: float | None = Field(
        0.9, ge=0, le=1, description="Max share of lines starting with a bullet."
    )
    max_ellipsis_lines: float | None = Field(
        0.3, ge=0, le=1, description="Max share of lines ending with an ellipsis."
    )
    max_repeated_lines: float | None = Field(
        0.3, ge=0, le=1, description="Max share of non-empty lines that repeat an earlier line (Gopher: 0.3)."
    )
    max_repeated_line_chars: float | None = Field(
        0.2, ge=0, le=1, description="Max share of characters in repeated lines (Gopher: 0.2)."
    )
    top_ngram_max_chars: dict[int, float] = Field(
        default_factory=lambda: {2: 0.2, 3: 0.18, 4: 0.16},
        description="n -> max share of word characters covered by the most frequent n-gram (Gopher).",
    )
    dup_ngram_max_chars: dict[int, float] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
        description="n -> max share of word characters inside n-grams that occur more than once (Gopher).",
    )
    ngram_min_words: int = Field(
        50,
        ge=0,
        description="Apply the n-gram filters only to documents with at least this many words (Gopher keeps "
        "none under 50 words; in a shorter docstring one repeated phrase already trips them).",
    )
    blocklist: list[str] = Field(
        default_factory=lambda: list(DEFAULT_BLOCKLIST),
        description="Terms (words or phrases) that drop a document; whole words, case-insensitive; "
        "[] disables.",
    )
    blocklist_min_hits: int = Field(
        1, ge=1, description="Blocklisted term occurrences needed to drop a document."
    )
    samples_per_reason: int = Field(
        5, ge=0, description="Dropped documents kept per reason in dropped_samples.jsonl."
    )
    workers: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Processes filtering shards in parallel, one input shard each (None: all cores; same "
        "output for any value; with execution.engine=dask the cluster's workers run the shards instead).",
    )
    max_dropped_share: float = Field(
        0.2, ge=0, le=1, description="Quality gate: fail if more than this share of documents is dropped."
    )

    @model_validator(mode="after")
    def _check(self) -> FilterConfig:
        pairs = [("min_words", "max_words"), ("min_mean_word_length", "max_mean_word_length")]
        for lo, hi in pairs:
            a, b = getattr(self, lo), getattr(self, hi)
            if a is not None and b is not None and a > b:
                raise ValueError(f"filter.{lo}={a} is greater than filter.{hi}={b}")
        for key in ("top_ngram_max_chars", "dup_ngram_max_chars"):
            for n, share in getattr(self, key).items():
                if n < 1 or not 0 <= share <= 1:
                    raise ValueError(f"filter.{key}: need n >= 1 and 0 <= share <= 1, got {n}: {share}")
        if any(not term.strip() for term in self.blocklist):
            raise ValueError("filter.blocklist: empty terms are not allowed")
        return self
