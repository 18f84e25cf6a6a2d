"""Forward a transformers/trl Trainer's logs to our `MetricLogger` (the stage's MLflow child run).

Trainers run with `report_to="none"`: their built-in MLflow callback would open its own active run,
which is thread-local and knows nothing of our parent/child runs. This callback sends every numeric
log entry to the stage's run instead, keyed by the global step, and adds tokens/s from the trl
trainers' cumulative `num_tokens`.

    trainer = SFTTrainer(..., callbacks=[MetricLoggerCallback(log)])
"""

from __future__ import annotations

import math
import time
from typing import Any

from transformers import TrainerCallback

from tasks.common.tracking import MetricLogger


class MetricLoggerCallback(TrainerCallback):
    """Sends `on_log` entries as metrics: `loss` -> `train/loss`, `eval_loss` -> `eval/loss`, ...

    `history` keeps every (step, metrics) pair sent, so a stage can report first/last values.
    """

    def __init__(self, log: MetricLogger, prefix: str = ""):
        self.log = log
        self.prefix = prefix
        self.history: list[tuple[int, dict[str, float]]] = []
        self._tokens: tuple[float, float] | None = None  # (num_tokens, time) at the previous train log

    def _name(self, key: str) -> str:
        if key.startswith("eval_"):
            return f"{self.prefix}eval/{key[5:]}"
        if key.startswith("train_"):  # the end-of-training summary (train_runtime, train_loss, ...)
            return f"{self.prefix}train_summary/{key[6:]}"
        return f"{self.prefix}train/{key}"

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._tokens = (0.0, time.perf_counter())

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        if not logs or not state.is_world_process_zero:
            return
        metrics = {
            self._name(k): float(v)
            for k, v in logs.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))
        }
        is_train = not any(k.startswith("eval_") for k in logs)
        if is_train and "num_tokens" in logs and self._tokens is not None:
            now, tokens = time.perf_counter(), float(logs["num_tokens"])
            seconds = now - self._tokens[1]
            if seconds > 0 and tokens > self._tokens[0]:
                metrics[f"{self.prefix}train/tokens_per_s"] = (tokens - self._tokens[0]) / seconds
            self._tokens = (tokens, now)
        if metrics:
            self.log.log_metrics(metrics, step=state.global_step)
            self.history.append((state.global_step, metrics))

    def series(self, name: str) -> list[float]:
        """Every value logged under `name` (e.g. 'train/loss'), in order."""
        return [m[name] for _, m in self.history if name in m]
