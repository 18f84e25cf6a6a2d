"""The base every stage config inherits: frozen, strict, and aware of which fields affect results."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field


class StageConfig(BaseModel):
    """A stage's knobs. Unknown keys are an error; instances are immutable.

    `NOT_RESULT_AFFECTING` names fields that change how a stage runs but not what it produces
    (log intervals, worker counts). They are left out of the stage hash, so changing them keeps the
    cache.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    NOT_RESULT_AFFECTING: ClassVar[frozenset[str]] = frozenset()

    def result_fields(self) -> dict[str, Any]:
        """The config as JSON-able data, without the fields that do not change the output."""
        data = self.model_dump(mode="json")
        return {k: v for k, v in data.items() if k not in self.NOT_RESULT_AFFECTING}


class TrainLoop(StageConfig):
    """Optimisation knobs shared by the sft and reward stages."""

    NOT_RESULT_AFFECTING: ClassVar[frozenset[str]] = frozenset(
        {"logging_steps", "eval_steps", "eval_batch_size", "threads"}
    )

    learning_rate: float = Field(1e-3, gt=0)
    epochs: float = Field(1.0, gt=0, description="Passes over the training pairs (unless max_steps is set).")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps.")
    batch_size: int = Field(16, gt=0, description="Examples (or pairs) per device per step.")
    grad_accum: int = Field(1, gt=0)
    max_length: int = Field(384, ge=16, description="Token cap per sequence.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    seed: int = 0
    bf16: bool | None = Field(None, description="None: bf16 on a GPU that supports it, fp32 on CPU.")
    max_train_samples: int | None = Field(None, gt=0, description="Use at most this many training rows.")
    max_eval_samples: int | None = Field(
        200, gt=0, description="Rows used for the eval loss during training."
    )
    logging_steps: int = Field(10, gt=0)
    eval_steps: int | None = Field(
        None, gt=0, description="Evaluate every N steps; default: 5 x logging_steps."
    )
    eval_batch_size: int = Field(32, gt=0)
    threads: int | None = Field(
        None, ge=1, description="CPU threads for torch; default: torch's (all cores)."
    )
