"""Config of the `export` stage: the model card, quantized exports and their gate, and the MLflow model
registry entry."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from conf.base import StageConfig

QuantFormat = Literal["int8", "gguf_f16", "gguf_q8_0"]
ALL_FORMATS: tuple[QuantFormat, ...] = ("int8", "gguf_f16", "gguf_q8_0")


class ExportConfig(StageConfig):
    NOT_RESULT_AFFECTING = frozenset({"register_model", "champion_alias"})

    model_name: str = Field("lmforge-tiny", min_length=1, description="Name in the model card's model-index.")
    registered_model_name: str = Field(
        "lmforge-tiny", min_length=1, description="MLflow model registry name."
    )
    register_model: bool = Field(True, description="Register the model in MLflow (skipped without tracking).")
    sample_answers: int = Field(
        8, ge=0, description="Rows of the card's sample-answers table (prompt, reference, SFT, PPO)."
    )
    quantize: list[QuantFormat] = Field(
        default_factory=lambda: list(ALL_FORMATS),
        description="Quantized exports, each loaded back and measured against full precision ([]: none).",
    )
    max_ppl_increase: dict[str, float] = Field(
        default_factory=lambda: {"int8": 0.02, "gguf_q8_0": 0.02, "gguf_f16": 0.005},
        description="Gate: the largest validation-perplexity rise (share) a quantized export may show.",
    )
    champion_alias: str | None = Field(
        "champion",
        description="Registry alias set on the new version when every gate passed (None: set none).",
    )
    verify_val_tokens: int = Field(8192, gt=1, description="Validation tokens scored per export format.")
    verify_block_size: int = Field(128, gt=1, description="Tokens per validation window (and prompt cap).")
    verify_prompts: int = Field(16, ge=1, description="Held-out prompts for greedy-token agreement.")
    verify_max_new_tokens: int = Field(24, ge=1, description="Greedy tokens per held-out prompt.")
    verify_batch_size: int = Field(8, ge=1, description="Validation windows per forward pass.")
    license: str = "apache-2.0"
    language: list[str] = Field(default_factory=lambda: ["en"])
    intended_use: str = Field(
        "A small research model trained end to end by lmforge, for studying the LLM lifecycle "
        "(data, pretraining, SFT, reward modelling, PPO, evaluation). It answers questions about "
        "Python library documentation in the style of docstring summaries."
    )
    out_of_scope_use: str = Field(
        "Any production or user-facing use; factual lookup without verification; advice of any kind "
        "(medical, legal, financial, security); generating code to run unreviewed; languages other "
        "than the training data's."
    )
    limitations: str = Field(
        "The model is small and trained on a narrow corpus: it produces fluent-looking but often wrong "
        "text, repeats itself, and knows nothing outside its training documents. The reward model is a "
        "learned proxy: PPO can exploit its blind spots (reward hacking), so higher reward does not "
        "imply better answers. Biases of the source documents (style, topics, the authors' dialect of "
        "English) carry over. PII scrubbing is pattern-based and can miss personal data."
    )

    @model_validator(mode="after")
    def _check_language(self) -> ExportConfig:
        if not self.language:
            raise ValueError("export.language must name at least one language code (e.g. ['en'])")
        if len(set(self.quantize)) != len(self.quantize):
            raise ValueError(f"export.quantize lists a format twice: {self.quantize}")
        unknown = set(self.max_ppl_increase) - set(ALL_FORMATS)
        if unknown:
            raise ValueError(
                f"export.max_ppl_increase: unknown format(s) {sorted(unknown)}; use int8, gguf_f16, gguf_q8_0"
            )
        return self
