"""GPU readiness check (`make gpu-check`): does this machine train, end to end, the way the big presets do?

On the GPUs present: a few pretraining steps of the `small` preset's model (8 layers x 512, 1024-token
sequences) on every GPU under torchrun with NCCL, bf16 autocast, FSDP2 and `torch.compile`, then a short
SFT (LoRA) and a PPO step (with the reward model they need), through the real pipeline and its stages.
It prints pretraining's MFU, tokens/s and peak memory per rank, and each stage's time and peak GPU
memory; it exits non-zero when a stage fails or the check runs over its budget (5 minutes by default).

Without a GPU it falls back to the CPU: gloo, fp32, FSDP2 over 2 processes, the `smoke` preset's tiny
sizes, no compile; that path is what the test suite runs (`tests/test_gpu_check.py`).

    .venv/bin/python infra/gpu_check.py [--root DIR] [--budget-seconds 300]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

# Stages the check runs, each on top of the cached ones before it: their peak GPU memory is measured
# one at a time (pretraining runs in torchrun ranks and reports its own).
TARGETS = ("tokenizer", "pretrain", "sft", "reward", "ppo")


def plan(gpus: int) -> tuple[str, list[str]]:
    """The preset and the overrides of the check: the `small` model on the GPUs, tiny sizes on CPU."""
    common = [
        "pretrain.warmup_steps=2",
        "pretrain.log_interval=2",
        "pretrain.sample_tokens=8",
        "pretrain.keep_final_checkpoint=false",
        "sft.max_eval_samples=16",
        "reward.max_eval_samples=16",
        "reward.min_eval_accuracy=0.0",
        "reward.on_policy_prompts=16",
        "reward.on_policy_eval_prompts=16",
        "ppo.steps=1",
        "ppo.batch_size=8",
        "ppo.mini_batch_size=4",
        "ppo.ppo_epochs=1",
        "ppo.eval_prompts=8",
        "ppo.min_reward_gain=-1000",
        "ppo.max_kl=1000",
    ]
    if gpus:
        return "small", [
            *common,
            "collect.sources=[{kind: pydocs, packages: [stdlib], min_chars: 120}]",
            "collect.max_docs=4000",
            "pretrain.device=cuda",
            f"pretrain.nproc_per_node={gpus}",
            "pretrain.parallel=fsdp",
            "pretrain.precision=bf16",
            "pretrain.compile=true",
            "pretrain.max_steps=20",
            "pretrain.eval_interval=20",
            "pretrain.checkpoint_interval=20",
            "pretrain.eval_tokens=65536",
            "sft.max_steps=10",
            "reward.max_steps=10",
        ]
    return "smoke", [
        *common,
        "pretrain.device=cpu",
        "pretrain.nproc_per_node=2",
        "pretrain.parallel=fsdp",
        "pretrain.precision=fp32",
        "pretrain.compile=false",
        "pretrain.max_steps=6",
        "pretrain.eval_interval=6",
        "pretrain.checkpoint_interval=6",
        "sft.max_steps=4",
        "reward.max_steps=4",
        "reward.on_policy_max_new_tokens=8",
        "ppo.max_new_tokens=8",
    ]


def quiet_defaults() -> None:
    """As `lmforge run`: no analytics or progress-bar noise; a busy machine gets time to start Prefect's
    temporary server. The environment overrides any of these."""
    for key, value in {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "TRANSFORMERS_VERBOSITY": "error",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }.items():
        os.environ.setdefault(key, value)


def describe_devices() -> tuple[int, str]:
    import torch

    gpus = torch.cuda.device_count()
    if not gpus:
        return 0, f"no GPU (torch {torch.__version__}): CPU fallback, gloo + fp32 + FSDP2 over 2 processes"
    names = ", ".join(sorted({torch.cuda.get_device_name(i) for i in range(gpus)}))
    nccl = torch.distributed.is_nccl_available()
    return gpus, (
        f"{gpus} x {names} (torch {torch.__version__}, CUDA {torch.version.cuda}, NCCL "
        f"{'available' if nccl else 'MISSING'}, bf16 {'yes' if torch.cuda.is_bf16_supported() else 'NO'})"
    )


def run_check(root: Path, gpus: int, budget: float) -> dict:
    """Run the stages of `TARGETS` one after another (each on the cached ones before it) and collect the
    figures; raises on a failed stage."""
    import torch

    from conf.loader import load_config
    from flows.runner import run_pipeline

    preset, overrides = plan(gpus)
    cfg = load_config(
        preset,
        overrides=[
            f"artifacts_root={root}",
            f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}",
            "tracking.experiment=gpu-check",
            *overrides,
        ],
    )
    started = time.perf_counter()
    figures: dict = {"preset": preset, "stages": {}}
    for target in TARGETS:
        if gpus:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        run = run_pipeline(cfg, [target], run_name=f"gpu-check-{target}")
        manifest = run.results[target].manifest
        row = {"seconds": round(time.perf_counter() - t0, 1)}
        if gpus and target != "pretrain":
            row["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if target == "pretrain":
            summary = json.loads((Path(manifest.path) / "train_summary.json").read_text())
            row.update(
                {k: summary[k] for k in ("mfu", "tokens_per_s", "peak_memory_gib", "world_size", "parallel")}
            )
            row["compile"], row["precision"] = cfg.pretrain.compile, cfg.pretrain.precision
            row["peak_flops_source"] = summary["peak_flops_source"]
        figures["stages"][target] = row
        print(f"  {target:<10} {_show(row)}", flush=True)
        if time.perf_counter() - started > budget:
            raise TimeoutError(f"the check ran past its budget of {budget:.0f} s after {target}")
    figures["seconds"] = round(time.perf_counter() - started, 1)
    return figures


def _show(row: dict) -> str:
    parts = []
    for k, v in row.items():
        if k == "mfu":
            parts.append(f"MFU {100 * v:.1f}%")
        elif isinstance(v, float):
            parts.append(f"{k} {v:,.3g}")
        else:
            parts.append(f"{k} {v}")
    return " | ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="artifacts root (default: a fresh temporary folder)")
    parser.add_argument("--budget-seconds", type=float, default=300.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet_defaults()
    gpus, devices = describe_devices()
    root = Path(args.root or tempfile.mkdtemp(prefix="lmforge-gpu-check-")).resolve()
    print(f"gpu-check: {devices}\n  artifacts: {root}", flush=True)
    try:
        figures = run_check(root, gpus, args.budget_seconds)
    except Exception as e:  # the summary line says what failed; the traceback is above it
        logging.exception("gpu-check failed")
        print(f"gpu-check: FAILED: {type(e).__name__}: {e}", flush=True)
        return 1
    (root / "gpu_check.json").write_text(json.dumps(figures, indent=2))
    print(f"gpu-check: OK in {figures['seconds']:.0f} s ({root / 'gpu_check.json'})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
