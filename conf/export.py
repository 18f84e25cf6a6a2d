"""Config of the `export` stage: the model card and the MLflow model registry entry."""

from __future__ import annotations

from pydantic import Field, model_validator

from conf.base import StageConfig


class ExportConfig(StageConfig):
    NOT_RESULT_AFFECTING = frozenset({"register_model"})

    model_name: str = Field("lmforge-tiny", min_length=1, description="Name in the model card's model-index.")
    registered_model_name: str = Field(
        "lmforge-tiny", min_length=1, description="MLflow model registry name."
    )
    register_model: bool = Field(True, description="Register the model in MLflow (skipped without tracking).")
    sample_answers: int = Field(
        8, ge=0, description="Rows of the card's sample-answers table (prompt, reference, SFT, PPO)."
    )
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
        return self
