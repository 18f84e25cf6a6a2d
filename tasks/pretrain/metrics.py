"""Rank 0's metric stream: a JSONL file in the stage folder and batched writes to the MLflow child run."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from tasks.common.jsonl import dumps, open_text, read_jsonl, write_jsonl
from tasks.common.tracking import MetricLogger, MlflowLogger

log = logging.getLogger("lmforge.pretrain")


def truncate_jsonl(path: Path, step: int) -> None:
    """Drop the rows written after `step` (a resumed run writes them again)."""
    kept = [row for row in read_jsonl(path) if row["step"] <= step] if path.exists() else []
    write_jsonl(path, kept)


class MetricSink:
    """Rank 0's metrics: every step to `metrics.jsonl`, and in batches to the stage's MLflow run."""

    def __init__(self, path: Path, logger: MetricLogger, resume_step: int):
        self.path, self.logger, self.pending = path, logger, []
        truncate_jsonl(path, resume_step)
        self.fh = open_text(path, "a")

    def add(self, step: int, metrics: dict[str, float]) -> None:
        self.fh.write(dumps({"step": step, **metrics}) + "\n")
        self.pending.append((step, metrics))

    def flush(self) -> None:
        self.fh.flush()
        pending, self.pending = self.pending, []
        try:
            if isinstance(self.logger, MlflowLogger):
                from mlflow.entities import Metric

                now = int(time.time() * 1000)
                items = [Metric(k, float(v), now, s) for s, m in pending for k, v in m.items()]
                for i in range(0, len(items), 1000):
                    self.logger.client.log_batch(self.logger.run_id, metrics=items[i : i + 1000])
            else:
                for s, m in pending:
                    self.logger.log_metrics(m, step=s)
        except Exception as e:  # tracking trouble must not kill a training run
            log.warning("could not log %d metric rows to MLflow: %s", len(pending), e)

    def close(self) -> None:
        self.flush()
        self.fh.close()
