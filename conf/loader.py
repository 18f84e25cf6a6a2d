"""Build a `PipelineConfig` from a preset, a YAML file and `--set a.b.c=value` overrides.

Every failure raises `ConfigError` naming the key path and what is allowed, before any work starts.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from conf.schema import PipelineConfig

PRESETS_DIR = Path(__file__).parent / "presets"


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who wrote the config."""


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config sections")
    return data


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def preset_data(name: str) -> dict[str, Any]:
    """A preset's raw data, with its `extends:` chain resolved (child keys win)."""
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown preset {name!r}; available presets: {', '.join(available_presets())}")
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    if parent:
        data = _deep_merge(preset_data(parent), data)
    data["preset"] = name
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a','b','c'], value), the value parsed as YAML (so 3, true, [1,2] work)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def apply_override(data: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    """Set `value` at `path` inside a copy of nested dict `data`, creating sections as needed."""
    out = dict(data)
    node = out
    for i, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = {}
        elif not isinstance(child, dict):
            where = ".".join(path[: i + 1])
            raise ConfigError(f"cannot set {'.'.join(path)}: {where} is a value, not a section")
        node[part] = dict(child)
        node = node[part]
    node[path[-1]] = value
    return out


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """Every pydantic model inside an annotation (through list[...], unions, Annotated[...])."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _tag_default(model: type[BaseModel], field: str) -> Any:
    """The default of a union member's tag field (`kind` for sources, `type` for LSH storages)."""
    return getattr(model.model_fields.get(field), "default", None)


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """Field names accepted at the section `loc` (the parent of a rejected key).

    `loc` may contain list indices and, for discriminated unions, the tag (e.g. `pydocs`).
    """
    candidates: list[type[BaseModel]] = [model]
    for part in loc:
        if isinstance(part, int):
            continue
        with_field = [c for c in candidates if part in c.model_fields]
        if with_field:
            candidates = _models_in(with_field[0].model_fields[part].annotation)
            continue
        tagged = [c for c in candidates if part in (_tag_default(c, "kind"), _tag_default(c, "type"))]
        if not tagged:
            return None
        candidates = tagged
    return sorted(candidates[0].model_fields) if len(candidates) == 1 else None


def format_validation_error(err: ValidationError, model: type[BaseModel] = PipelineConfig) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        path = ".".join(str(p) for p in loc) or "<root>"
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, tuple(p for p in loc[:-1] if not isinstance(p, int)))
            hint = f"; allowed keys here: {', '.join(allowed)}" if allowed else ""
            lines.append(f"  {path}: unknown key{hint}")
        else:
            got = e.get("input")
            shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
            lines.append(f"  {path}: {e['msg']}{shown}")
    return "invalid configuration:\n" + "\n".join(lines)


def load_config(
    preset: str | None = "tiny",
    config_file: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> PipelineConfig:
    """Preset, then a YAML file, then `--set` overrides, validated as one `PipelineConfig`."""
    data: dict[str, Any] = preset_data(preset) if preset else {}
    if config_file:
        data = _deep_merge(data, _read_yaml(Path(config_file)))
    for item in overrides:
        path, value = parse_override(item)
        data = apply_override(data, path, value)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None
