"""`lmforge serve MODEL`: the OpenAI-compatible server (and playground at `/`) for an exported model.

MODEL is a model folder, a stage folder holding model/ (artifacts/export/<hash12>), or an MLflow
registry URI (models:/lmforge-tiny@champion: the version the export stage marked when every quality
gate passed; models:/lmforge-tiny/3: a version number). Registry URIs are resolved against
--tracking-uri (default: $MLFLOW_TRACKING_URI, else the artifacts root's mlflow.db).

Settings come from conf/serve.py's defaults, then --config YAML, then --set key=value (e.g.
--set guardrails.blocked_terms='["password"]' --set max_tokens_limit=256), then the flags.
The server binds 127.0.0.1 unless --host says otherwise.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def add_arguments(p: Any) -> None:
    """The `serve` subcommand's arguments (argparse parser from flows/cli.py)."""
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("model", help="model folder, stage folder, or models:/NAME@ALIAS | models:/NAME/VERSION")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--variant", choices=["full", "int8"], help="full precision (default) or int8 weights")
    p.add_argument("--config", help="YAML file of serve settings (conf/serve.py)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--tracking-uri", help="MLflow store for models:/ URIs")


def build_config(args: Any) -> Any:
    """ServeConfig from defaults < --config < --set < flags; a bad value names its field."""
    import yaml

    from conf.loader import ConfigError, format_validation_error
    from conf.serve import ServeConfig

    data: dict[str, Any] = {}
    if args.config:
        loaded = yaml.safe_load(Path(args.config).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{args.config}: expected a mapping of serve settings")
        data.update(loaded)
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item}: expected KEY=VALUE")
        node = data
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    data["model"] = args.model
    for flag in ("host", "port", "variant"):
        if getattr(args, flag) is not None:
            data[flag] = getattr(args, flag)
    from pydantic import ValidationError

    try:
        return ServeConfig(**data)
    except ValidationError as e:
        raise ConfigError(f"serve settings:\n{format_validation_error(e, ServeConfig)}") from None


def default_tracking_uri() -> str:
    from tasks.common.tracking import default_tracking_uri as from_root

    root = Path(os.environ.get("LMFORGE_ARTIFACTS", "artifacts")).resolve()
    return os.environ.get("MLFLOW_TRACKING_URI") or from_root(root)


def build_engine(cfg: Any, tracking_uri: str | None = None) -> Any:
    """Resolve, load and wrap the model the config names."""
    from tasks.serve.engine import Engine, load_model, resolve_model

    cache = Path(os.environ.get("LMFORGE_SERVE_CACHE", Path.home() / ".cache" / "lmforge" / "models"))
    folder, name = resolve_model(cfg.model, tracking_uri or default_tracking_uri(), cache)
    model, tok = load_model(folder, cfg.variant)
    model_id = cfg.model_id or (name if cfg.variant == "full" else f"{name}-{cfg.variant}")
    log.info("serve: %s from %s (%s)", model_id, folder, cfg.variant)
    return Engine(model, tok, model_id, cfg.threads)


def run(args: Any) -> int:
    """Entry point of the `serve` subcommand."""
    import uvicorn

    from tasks.serve.app import create_app

    cfg = build_config(args)
    try:
        engine = build_engine(cfg, args.tracking_uri)
    except (FileNotFoundError, LookupError, ValueError) as e:  # no such folder / registry entry / bad URI
        print(f"error: {e}", file=sys.stderr)
        return 2
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serve: binding %s exposes the model beyond this machine", cfg.host)
    print(f"lmforge serve: http://{cfg.host}:{cfg.port}/ (playground), OpenAI API at /v1", flush=True)
    uvicorn.run(create_app(cfg, engine), host=cfg.host, port=cfg.port, log_level="info")
    return 0
