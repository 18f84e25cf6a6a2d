"""Build a `PipelineConfig` from a preset, a YAML file and `--set a.b.c=value` overrides.

Every failure raises `ConfigError` naming the key path and what is allowed, before any work starts.
"""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from conf.schema import PipelineConfig, models_in, tag_default

PRESETS_DIR = Path(__file__).parent / "presets"


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who wrote the config."""


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first: int):
        super().__init__(f"{line}: duplicate key {key!r} (first at line {first}): give each key once")


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error: plain PyYAML keeps
    the last one, so a second `pretrain:` section would silently replace the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: overriding merged keys is the point
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # PyYAML reports an unhashable key itself
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _DuplicateKey(key, line, seen[key])
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> dict[str, Any]:
    """A config file's mapping; a missing, unreadable, binary or malformed file is a `ConfigError`."""
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder; name a YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path}: not a YAML text file (byte 0x{e.object[e.start]:02x} is not UTF-8)"
        ) from None
    except OSError as e:
        raise ConfigError(f"config file {path}: cannot read it ({e.strerror or e})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader) or {}  # noqa: S506 (a SafeLoader subclass)
    except _DuplicateKey as e:
        raise ConfigError(f"{path}:{e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(
            f"{path}: not valid YAML: {str(e).replace('<unicode string>', str(path))}"
        ) from None
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


def preset_data(name: str, _chain: tuple[str, ...] = ()) -> dict[str, Any]:
    """A preset's raw data, with its `extends:` chain resolved (child keys win). Only the names of
    conf/presets/*.yaml are presets: a path (`../../x`) is not one (use --config for a file)."""
    if not isinstance(name, str) or name not in available_presets():
        hint = "; to read a YAML file, use --config FILE" if isinstance(name, str) and "/" in name else ""
        raise ConfigError(
            f"unknown preset {name!r}; available presets: {', '.join(available_presets())}{hint}"
        )
    if name in _chain:
        raise ConfigError(f"preset {name!r} extends itself: {' -> '.join((*_chain, name))}")
    data = _read_yaml(PRESETS_DIR / f"{name}.yaml")
    parent = data.pop("extends", None)
    if parent:
        data = _deep_merge(preset_data(parent, (*_chain, name)), data)
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
            candidates = models_in(with_field[0].model_fields[part].annotation)
            continue
        tagged = [c for c in candidates if part in (tag_default(c, "kind"), tag_default(c, "type"))]
        if not tagged:
            return None
        candidates = tagged
    return sorted(candidates[0].model_fields) if len(candidates) == 1 else None


def format_validation_error(err: ValidationError, model: type[BaseModel] = PipelineConfig) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        # a check across the whole config (conf/schema.py) names its keys in the error's context
        path = ".".join(str(p) for p in loc) or (e.get("ctx") or {}).get("path") or "<root>"
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, tuple(p for p in loc[:-1] if not isinstance(p, int)))
            hint = f"; allowed keys here: {', '.join(allowed)}" if allowed else ""
            lines.append(f"  {path}: unknown key{hint}")
        else:
            got = e.get("input")
            shown = "" if not loc or isinstance(got, dict | list) else f" (got {got!r})"
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
