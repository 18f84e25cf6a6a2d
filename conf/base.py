"""The base every stage config inherits: frozen, strict, and aware of which fields affect results."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


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
