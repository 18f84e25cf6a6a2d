"""`PipelineConfig`: the whole lifecycle's configuration, one typed section per stage."""

from __future__ import annotations

import math
import re
import typing
import warnings
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator, model_validator
from pydantic_core import PydanticCustomError

from conf.align_data import AlignDataConfig
from conf.collect import CollectConfig
from conf.dedup import DedupConfig
from conf.evaluate import EvaluateConfig
from conf.execution import ExecutionConfig
from conf.export import ExportConfig
from conf.filter import FilterConfig
from conf.judge import JudgeConfig
from conf.ppo import PpoConfig
from conf.pretrain import PretrainConfig
from conf.reward import RewardConfig
from conf.scrub import ScrubConfig
from conf.sft import SftConfig
from conf.tokenizer import TokenizerConfig


class TrackingConfig(BaseModel):
    """Where MLflow records runs. Unset, the runner (`flows/environment.py`) falls back to
    $MLFLOW_TRACKING_URI, then to an embedded store under the artifacts root."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI; default: $MLFLOW_TRACKING_URI, else SQLite under artifacts. A "
        "password here is masked wherever the config is logged: prefer $MLFLOW_TRACKING_URI for one.",
    )
    experiment: str = "lmforge"

    @field_validator("tracking_uri")
    @classmethod
    def _not_a_masked_copy(cls, uri: str | None) -> str | None:
        """A URI copied from a logged config has `***` for its password: fail now, not at login."""
        if uri and ":***@" in uri:
            raise ValueError(
                "the password in this URI is masked (`***`, as lmforge logs it); pass the real URI in "
                "$MLFLOW_TRACKING_URI instead of the config"
            )
        return uri

    @field_serializer("tracking_uri", when_used="json")
    def _without_password(self, uri: str | None) -> str | None:
        """The URI with any password masked wherever the config is written out as data (MLflow params,
        `show-config`, Prefect's record of flow parameters); the model itself keeps the real one."""
        return redact_uri(uri) if uri else uri


_USERINFO_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*):[^@/?#\s]*@")


def redact_uri(text: str) -> str:
    """`scheme://user:secret@host/...` -> `scheme://user:***@host/...` (every URI in `text`)."""
    return _USERINFO_PASSWORD.sub(r"\g<head>:***@", text)


# Config sections renamed to their stage's name: old key -> new key. The old key still works, with a warning.
RENAMED_SECTIONS = {"pii": "scrub"}


def _rename_section(data: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """`data` with section `old` under its new name `new`; an error if both are set."""
    if new in data:
        raise ValueError(
            f"both '{old}' and '{new}' are set: '{old}' is the old name of '{new}'; keep '{new}'"
        )
    warnings.warn(
        f"config section '{old}' is now '{new}' (e.g. --set {new}.workers=2); '{old}' will stop working",
        FutureWarning,
        stacklevel=3,
    )
    return {(new if k == old else k): v for k, v in data.items()}


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """Every pydantic model inside an annotation (through list[...], unions, Annotated[...])."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in models_in(arg)]


def tag_default(model: type[BaseModel], field: str) -> Any:
    """The default of a union member's tag field (`kind` for sources, `type` for LSH storages)."""
    return getattr(model.model_fields.get(field), "default", None)


def _leaf_types(annotation: Any) -> set[Any]:
    """The plain types an annotation accepts, through unions and Annotated[...] (`int | None`: int, None)."""
    if (
        typing.get_origin(annotation) in (typing.Union, typing.Annotated)
        or type(annotation).__name__ == "UnionType"
    ):
        args = typing.get_args(annotation)
        if typing.get_origin(annotation) is typing.Annotated:
            args = args[:1]
        return {leaf for arg in args for leaf in _leaf_types(arg)}
    return {type(None) if annotation is None else annotation}


def _model_for(annotation: Any, value: dict[str, Any]) -> type[BaseModel] | None:
    """The model a mapping is validated as: the only one, or the union member its tag names."""
    models = models_in(annotation)
    if len(models) == 1:
        return models[0]
    for tag in ("kind", "type"):
        tagged = [m for m in models if tag in value and tag_default(m, tag) == value[tag]]
        if len(tagged) == 1:
            return tagged[0]
    return None


def _bools_as_numbers(model: type[BaseModel], data: Any, path: str = "") -> Iterator[str]:
    """Paths where `data` gives true/false for a number field (pydantic's lax mode would read 1/0)."""
    if not isinstance(data, dict):
        return
    for key, value in data.items():
        field = model.model_fields.get(key) if isinstance(key, str) else None
        if field is not None:
            yield from _bools_in_value(field.annotation, value, f"{path}{key}")


def _bools_in_value(annotation: Any, value: Any, path: str) -> Iterator[str]:
    leaves = _leaf_types(annotation)
    if isinstance(value, bool):
        if bool not in leaves and leaves & {int, float}:
            yield path
    elif isinstance(value, dict):
        model = _model_for(annotation, value)
        if model is not None:
            yield from _bools_as_numbers(model, value, f"{path}.")
    elif isinstance(value, list | tuple):
        items = [
            a for leaf in leaves if typing.get_origin(leaf) in (list, tuple) for a in typing.get_args(leaf)
        ]
        item = typing.Union[tuple(a for a in items if a is not Ellipsis)] if items else Any  # noqa: UP007
        for i, v in enumerate(value):
            yield from _bools_in_value(item, v, f"{path}.{i}")


def _non_finite(value: Any, path: str = "") -> Iterator[tuple[str, float]]:
    """(path, value) of every NaN or infinite float in a validated config (YAML `.inf`, `--set x=nan`)."""
    if isinstance(value, float) and not math.isfinite(value):
        yield path, value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _non_finite(getattr(value, name), f"{path}{'.' if path else ''}{name}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from _non_finite(v, f"{path}.{i}")
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _non_finite(v, f"{path}.{k}")


class PipelineConfig(BaseModel):
    """One section per stage, named like the stage (see `flows/stages.py`), plus tracking and execution."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _renamed_sections_and_strict_bools(cls, data: Any) -> Any:
        """Accept the old name of a renamed section, with a warning naming the new one. Then refuse
        true/false for a number field: `max_steps: true` is a mistake, not 1 (the error's `path` names
        the keys; `conf.loader.format_validation_error` shows it)."""
        if not isinstance(data, dict):
            return data
        for old, new in RENAMED_SECTIONS.items():
            if old in data:
                data = _rename_section(data, old, new)
        paths = list(_bools_as_numbers(cls, data))
        if paths:
            raise PydanticCustomError(
                "bool_for_number",
                "expected a number, got true/false (booleans are not numbers here)",
                {"path": ", ".join(paths)},
            )
        return data

    @model_validator(mode="after")
    def _finite_numbers(self) -> PipelineConfig:
        """NaN and infinity are never a setting (`pretrain.lr=.inf` would train to NaN)."""
        found = list(_non_finite(self))
        if found:
            raise PydanticCustomError(
                "finite_number",
                "must be a finite number (got {value})",
                {"path": ", ".join(p for p, _ in found), "value": found[0][1]},
            )
        return self

    name: str = Field("lmforge", description="Run name prefix shown in MLflow and Prefect.")
    preset: str = Field("custom", description="Preset this config was built from (informational).")
    artifacts_root: str | None = Field(
        None,
        description="Where stage folders live; default (resolved by the runner): $LMFORGE_ARTIFACTS, "
        "else ./artifacts.",
    )
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)

    collect: CollectConfig = Field(default_factory=CollectConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    scrub: ScrubConfig = Field(default_factory=ScrubConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    align_data: AlignDataConfig = Field(default_factory=AlignDataConfig)
    sft: SftConfig = Field(default_factory=SftConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    ppo: PpoConfig = Field(default_factory=PpoConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
