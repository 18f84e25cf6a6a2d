"""Evaluation outputs besides metrics: MLflow tables, comparison plots, the optional
lm-evaluation-harness run, and a description of the hardware the numbers came from."""

from __future__ import annotations

import logging
import platform
from pathlib import Path

log = logging.getLogger(__name__)


def columns(rows: list[dict]) -> dict[str, list]:
    """Row dicts -> the column dict `MlflowClient.log_table` takes."""
    keys = list(rows[0]) if rows else []
    return {k: [r.get(k) for r in rows] for k in keys}


def hardware() -> str:
    """Where the numbers came from: timings and sampled text depend on it."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def plots(
    folder: Path,
    metrics: dict[str, float],
    rewards: dict[str, list[float]],
    prefs: dict[str, list[float]],
    kls: list[float],
) -> list[Path]:
    """Two PNGs: perplexity/bits-per-byte per model, and reward/ROUGE/KL comparisons of SFT vs PPO."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    names = ["base", "sft", "ppo"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, title in ((axes[0], "ppl", "validation perplexity"), (axes[1], "bpb", "bits per byte")):
        values = [metrics[f"eval/{key}_{n}"] for n in names]
        ax.bar(names, values, color=["#999999", "#4c72b0", "#dd8452"])
        ax.set_title(title)
        if key == "ppl":
            ax.set_yscale("log")  # an untrained model sits near the vocabulary size, trained ones near 1-100
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    first = folder / "perplexity.png"
    fig.savefig(first, dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    axes[0].hist(
        [rewards["sft"], rewards["ppo"]], bins=15, label=["sft", "ppo"], color=["#4c72b0", "#dd8452"]
    )
    axes[0].set_title(f"reward on eval prompts (PPO win rate {metrics['eval/win_rate_ppo_vs_sft']:.2f})")
    axes[0].legend()
    axes[1].hist(
        [prefs["chosen"], prefs["rejected"]],
        bins=15,
        label=["chosen", "rejected"],
        color=["#55a868", "#c44e52"],
    )
    axes[1].set_title(f"reward model on held-out pairs (acc {metrics['eval/rm_accuracy']:.2f})")
    axes[1].legend()
    axes[2].hist(kls, bins=15, color="#8172b2")
    axes[2].set_title(f"log PPO - log SFT per response (mean {metrics['eval/kl_ppo_sft']:.3g})")
    fig.tight_layout()
    second = folder / "alignment.png"
    fig.savefig(second, dpi=100)
    plt.close(fig)
    return [first, second]


def run_lm_eval(cfg, model_dirs: dict[str, Path], device: str) -> dict[str, float]:
    """lm-evaluation-harness on model folders (`hf` model type); metrics `lm_eval/<model>/<task>/<metric>`.

    Tasks come from lm_eval's own set and, when `cfg.lm_eval_include_path` is set, from the YAMLs in that
    folder.
    """
    try:
        import lm_eval
    except ImportError as e:
        raise RuntimeError(
            "evaluate.lm_eval_tasks is set but lm-evaluation-harness is not installed: "
            "`pip install 'lmforge[eval]'`, or set evaluate.lm_eval_tasks=[]"
        ) from e
    task_manager = lm_eval_task_manager(cfg)
    metrics: dict[str, float] = {}
    for name, path in model_dirs.items():
        result = lm_eval.simple_evaluate(
            model="hf",
            model_args=f"pretrained={path},dtype=float32",
            tasks=list(cfg.lm_eval_tasks),
            limit=cfg.lm_eval_limit,
            batch_size=cfg.batch_size,
            device=device,
            log_samples=False,
            task_manager=task_manager,
        )
        for task, values in (result or {}).get("results", {}).items():
            for key, value in values.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and "stderr" not in key:
                    metrics[f"lm_eval/{name}/{task}/{key.replace(',', '_')}"] = float(value)
    log.info("lm_eval: %s", metrics)
    return metrics


def lm_eval_include_folder(cfg) -> Path | None:
    """`cfg.lm_eval_include_path` as a folder that exists (None when unset); checked when the stage starts,
    not after the generations."""
    if cfg.lm_eval_include_path is None:
        return None
    folder = Path(cfg.lm_eval_include_path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"evaluate.lm_eval_include_path={cfg.lm_eval_include_path!r} is not a folder "
            f"(it should hold lm_eval task YAMLs; resolved to {folder.resolve()})"
        )
    return folder


def lm_eval_task_manager(cfg):
    """A TaskManager that also knows the tasks of `cfg.lm_eval_include_path` (None without one: lm_eval's
    default).

    When every requested task is a task of the folder, lm_eval's own ~15k task YAMLs are not indexed
    (~4 s saved).
    """
    folder = lm_eval_include_folder(cfg)
    if folder is None:
        return None
    from lm_eval.tasks import TaskManager

    tasks = list(cfg.lm_eval_tasks)
    local = TaskManager(include_path=str(folder), include_defaults=False)
    if set(tasks) <= set(local.all_subtasks):
        return local
    manager = TaskManager(include_path=str(folder))
    missing = [t for t in tasks if t not in manager.all_tasks and not Path(t).is_file()]
    if missing:
        raise ValueError(
            f"evaluate.lm_eval_tasks names {missing}, found neither among lm_eval's tasks nor in "
            f"evaluate.lm_eval_include_path={cfg.lm_eval_include_path!r} "
            f"(tasks there: {sorted(local.all_tasks)}; "
            "a YAML that fails to parse is skipped)"
        )
    return manager


def independent_plot(folder: Path, metrics: dict[str, float], judge_rewards: dict[str, list[float]]) -> Path:
    """`independent.png`: what no policy optimised against: the judge's rewards per policy, the reference
    scores beside the best constant answer, and the distinct-response rates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    names = [n for n in ("base", "sft", "ppo") if f"eval/distinct_{n}" in metrics]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    axes[0].hist([judge_rewards[n] for n in names], bins=15, label=names)
    ci = [
        metrics.get(f"eval/judge_win_rate_ppo_vs_sft{s}", float("nan")) for s in ("", "_ci_low", "_ci_high")
    ]
    axes[0].set_title(f"judge reward (PPO win rate {ci[0]:.2f} [{ci[1]:.2f}, {ci[2]:.2f}])")
    axes[0].legend()
    bars = [*names, "constant"]
    for offset, score in ((-0.2, "rouge_l"), (0.2, "token_f1")):
        values = [metrics.get(f"eval/{score}_{n}", float("nan")) for n in bars]
        axes[1].bar([i + offset for i in range(len(bars))], values, width=0.4, label=score)
    axes[1].set_xticks(range(len(bars)), bars)
    axes[1].set_title("reference scores vs the best constant answer")
    axes[1].legend()
    axes[2].bar(names, [metrics[f"eval/distinct_{n}"] for n in names], label="distinct answers / prompts")
    axes[2].plot(names, [metrics[f"eval/distinct2_{n}"] for n in names], "ko-", label="distinct-2")
    axes[2].set_ylim(0, 1.05)
    axes[2].set_title("diversity of greedy answers")
    axes[2].legend()
    fig.tight_layout()
    path = folder / "independent.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
