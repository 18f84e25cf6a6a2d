"""Where the runner reads the environment, so `conf/` never does: the artifacts root and MLflow store.

A config value always wins; the environment variable is the deployment's default (infra/ sets both on
every pod and container); the last fallback keeps a laptop run self-contained.
"""

from __future__ import annotations

import os
from pathlib import Path

ARTIFACTS_ENV = "LMFORGE_ARTIFACTS"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"


def artifacts_root(configured: str | None) -> Path:
    """`artifacts_root` from the config, else $LMFORGE_ARTIFACTS, else ./artifacts; absolute."""
    root = configured or os.environ.get(ARTIFACTS_ENV) or "artifacts"
    return Path(root).expanduser().resolve()


def tracking_uri(configured: str | None) -> str | None:
    """`tracking.tracking_uri` from the config, else $MLFLOW_TRACKING_URI; None: the embedded SQLite
    store under the artifacts root (`Tracker.for_pipeline`)."""
    return configured or os.environ.get(TRACKING_URI_ENV) or None
