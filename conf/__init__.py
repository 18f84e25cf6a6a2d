"""Typed configuration: stage models, the pipeline model, presets and `--set` overrides."""

from conf.loader import ConfigError, load_config
from conf.schema import PipelineConfig

__all__ = ["ConfigError", "PipelineConfig", "load_config"]
