"""The loss curves of a pretraining run, saved beside the model and logged to the stage's MLflow run."""

from __future__ import annotations

from pathlib import Path

from tasks.common.tracking import MetricLogger


def plot_losses(metrics: list[dict], out: Path, logger: MetricLogger) -> None:
    """Train loss per step and val loss at each evaluation, as `<out>/loss.png` and `plots/loss.png`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    train = [(r["step"], r["loss"]) for r in metrics if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in metrics if "val_loss" in r]
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", lw=1)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=100)
    try:
        logger.log_figure(fig, "plots/loss.png")
    finally:
        plt.close(fig)
