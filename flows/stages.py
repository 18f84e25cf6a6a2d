"""The stage registry: every lifecycle stage, in DAG order, with its upstream stages.

Adding a stage = writing its function in `tasks/` and one `StageSpec` line here. A stage whose config
names files the stage reads (a local dataset, a folder of task YAMLs) also gets a `fingerprint` here:
the runner hashes those files into the stage hash, so `conf/` stays a pure description.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from conf.align_data import AlignDataConfig
from conf.evaluate import EvaluateConfig
from conf.tokenizer import TokenizerConfig
from tasks import (
    align_data,
    collect,
    dedup,
    evaluate,
    export,
    judge,
    ppo,
    pretrain,
    reward,
    scrub,
    sft,
    tokenizer,
)
from tasks import filter as filter_
from tasks.common.alignment import EVAL_DOCUMENTS, alignment_shortfall
from tasks.common.artifacts import Manifest, sha256_files, sha256_tree
from tasks.common.stage import PrecheckFn, StageSpec


def align_data_fingerprint(cfg: AlignDataConfig) -> dict[str, Any]:
    """The content of local dataset files: editing one re-runs align_data (Hub datasets pin `revision`)."""
    local = [src.path for src in (*cfg.sft_datasets, *cfg.pref_datasets) if src.is_local]
    files = sha256_files(local)
    return {"_dataset_sha256": files} if files else {}


def tokenizer_fingerprint(cfg: TokenizerConfig) -> dict[str, Any]:
    """The content of the user's evaluation files (`decontam_files`): editing one re-runs the tokenizer."""
    files: dict[str, Any] = {}
    for entry in cfg.decontam_files:
        path = Path(entry).expanduser()
        files[entry] = sha256_tree(path) if path.is_dir() else sha256_files([entry])
    return {"_decontam_sha256": files} if files else {}


def needs_alignment_data(stage: str) -> PrecheckFn:
    """The precheck of an alignment stage: align_data's rows it reads exist (or, before align_data ran,
    some source is configured), else the runner stops before any training, naming the fields to set."""

    def check(pipeline_cfg: Any, done: dict[str, Manifest]) -> str | None:
        align = done.get("align_data")
        return alignment_shortfall(
            stage, pipeline_cfg.align_data.has_sources, dict(align.counts) if align else None
        )

    return check


def evaluate_fingerprint(cfg: EvaluateConfig) -> dict[str, Any]:
    """Every file under `lm_eval_include_path`: editing a task YAML or its data re-runs evaluate."""
    folder = Path(cfg.lm_eval_include_path).expanduser() if cfg.lm_eval_include_path else None
    if folder is None or not folder.is_dir():
        return {}
    return {"_lm_eval_include_sha256": sha256_tree(folder)}


STAGES: dict[str, StageSpec] = {
    s.name: s
    for s in [
        StageSpec("collect", collect.collect, (), collect.STAGE_VERSION, retries=1, key_figure="documents"),
        StageSpec(
            "filter",
            filter_.filter_documents,
            ("collect",),
            filter_.STAGE_VERSION,
            retries=1,
            key_figure="documents",
            gate=filter_.gate,
            sharded=True,
        ),
        StageSpec(
            "dedup",
            dedup.dedup,
            ("filter",),
            dedup.STAGE_VERSION,
            retries=1,
            key_figure="documents",
            gate=dedup.gate,
            sharded=True,
        ),
        StageSpec(
            "scrub",
            scrub.scrub,
            ("dedup",),
            scrub.STAGE_VERSION,
            key_figure="pii_total",
            gate=scrub.gate,
            sharded=True,
        ),
        StageSpec(
            "align_data",
            align_data.align_data,
            ("scrub",),
            align_data.STAGE_VERSION,
            key_figure="prefs_eval",
            fingerprint=align_data_fingerprint,
        ),
        StageSpec(
            "tokenizer",
            tokenizer.train_tokenizer,
            ("scrub", "align_data"),
            tokenizer.STAGE_VERSION,
            key_figure="bytes_per_token_val",
            fingerprint=tokenizer_fingerprint,
            keyed_files={"align_data": (EVAL_DOCUMENTS,)},  # new training pairs keep the pretrained model
        ),
        StageSpec(
            "pretrain",
            pretrain.pretrain,
            ("tokenizer",),
            pretrain.STAGE_VERSION,
            retries=1,
            resumable=True,
            key_figure="final/val_loss",
            gate=pretrain.gate,
        ),
        StageSpec(
            "sft",
            sft.sft,
            ("pretrain", "align_data"),
            sft.STAGE_VERSION,
            key_figure="eval_loss",
            precheck=needs_alignment_data("sft"),
        ),
        StageSpec(
            "reward",
            reward.reward,
            ("sft", "align_data"),
            reward.STAGE_VERSION,
            key_figure="eval_accuracy",
            gate=reward.gate,
            precheck=needs_alignment_data("reward"),
        ),
        StageSpec(
            "judge",
            judge.judge,
            ("sft", "align_data"),
            judge.STAGE_VERSION,
            key_figure="eval_accuracy",
            gate=judge.gate,
            precheck=needs_alignment_data("judge"),
        ),
        StageSpec(
            "ppo",
            ppo.ppo,
            ("sft", "reward", "align_data"),
            ppo.STAGE_VERSION,
            key_figure="reward_gain",
            gate=ppo.gate,
            precheck=needs_alignment_data("ppo"),
        ),
        StageSpec(
            "evaluate",
            evaluate.evaluate,
            evaluate.INPUTS,
            evaluate.STAGE_VERSION,
            key_figure="eval/judge_win_rate_ppo_vs_sft",
            gate=evaluate.gate,
            precheck=needs_alignment_data("evaluate"),
            fingerprint=evaluate_fingerprint,
        ),
    ]
}
# export writes the model card from every stage above, so its inputs are the whole registry so far
STAGES["export"] = StageSpec(
    "export",
    export.export,
    tuple(STAGES),
    export.STAGE_VERSION,
    gate=export.gate,
    key_figure="registered_model_version",
)

# Sub-flows: the stages each one ends with (upstream stages run or come from cache).
_SUBFLOW_STAGES = {
    "data": ("collect", "filter", "dedup", "scrub", "align_data", "tokenizer"),
    "pretrain": ("pretrain",),
    "align": ("sft", "reward", "judge", "ppo"),
    "evaluate": ("evaluate", "export"),
}
SUBFLOWS: dict[str, list[str]] = {
    name: [n for n in stages if n in STAGES] for name, stages in _SUBFLOW_STAGES.items()
}


# Stages renamed to the name users see: old name -> new name (accepted, with a warning).
RENAMED_STAGES = {"train_tokenizer": "tokenizer"}


def plan(targets: list[str] | None = None) -> list[str]:
    """The stages needed for `targets` (all when None), in DAG order."""
    if not targets:
        return list(STAGES)
    for old in set(targets) & set(RENAMED_STAGES):
        warnings.warn(f"stage '{old}' is now '{RENAMED_STAGES[old]}'", FutureWarning, stacklevel=2)
    targets = [RENAMED_STAGES.get(t, t) for t in targets]
    unknown = [t for t in targets if t not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; stages: {', '.join(STAGES)}")
    needed: set[str] = set()

    def visit(name: str) -> None:
        if name not in needed:
            needed.add(name)
            for up in STAGES[name].inputs:
                visit(up)

    for t in targets:
        visit(t)
    return [n for n in STAGES if n in needed]
