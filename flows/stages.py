"""The stage registry: every lifecycle stage, in DAG order, with its upstream stages.

Adding a stage = writing its function in `tasks/` and one `StageSpec` line here.
"""

from __future__ import annotations

from tasks import align_data, collect, dedup, evaluate, model_card, pii, ppo, pretrain, reward, sft, tokenizer
from tasks import filter as filter_
from tasks.common.stage import StageSpec

STAGES: dict[str, StageSpec] = {
    s.name: s
    for s in [
        StageSpec("collect", collect.collect, "collect", (), collect.STAGE_VERSION, retries=1, key_figure="documents"),
        StageSpec(
            "filter", filter_.filter_documents, "filter", ("collect",), filter_.STAGE_VERSION, retries=1,
            key_figure="documents", gate=filter_.gate, sharded=True,
        ),
        StageSpec(
            "dedup", dedup.dedup, "dedup", ("filter",), dedup.STAGE_VERSION, retries=1,
            key_figure="documents", gate=dedup.gate, sharded=True,
        ),
        StageSpec(
            "scrub", pii.scrub, "pii", ("dedup",), pii.STAGE_VERSION, key_figure="pii_total", gate=pii.gate,
            sharded=True,
        ),
        StageSpec(
            "align_data", align_data.align_data, "align_data", ("scrub",), align_data.STAGE_VERSION,
            key_figure="prefs_eval",
        ),
        StageSpec(
            "train_tokenizer", tokenizer.train_tokenizer, "tokenizer", ("scrub", "align_data"), tokenizer.STAGE_VERSION,
            key_figure="bytes_per_token_val",
        ),
        StageSpec(
            "pretrain", pretrain.pretrain, "pretrain", ("train_tokenizer",), pretrain.STAGE_VERSION, retries=1,
            resumable=True, key_figure="final/val_loss", gate=pretrain.gate,
        ),
        StageSpec("sft", sft.sft, "sft", ("pretrain", "align_data"), sft.STAGE_VERSION, key_figure="eval_loss"),
        StageSpec(
            "reward", reward.reward, "reward", ("sft", "align_data"), reward.STAGE_VERSION,
            key_figure="eval_accuracy", gate=reward.gate,
        ),
        StageSpec(
            "ppo", ppo.ppo, "ppo", ("sft", "reward", "align_data"), ppo.STAGE_VERSION,
            key_figure="reward_gain", gate=ppo.gate,
        ),
        StageSpec(
            "evaluate", evaluate.evaluate, "evaluate", evaluate.INPUTS, evaluate.STAGE_VERSION,
            key_figure="eval/win_rate_ppo_vs_sft", gate=evaluate.gate,
        ),
    ]
}
# export writes the model card from every stage above, so its inputs are the whole registry so far
STAGES["export"] = StageSpec("export", model_card.export, "export", tuple(STAGES), model_card.STAGE_VERSION,
                             key_figure="registered_model_version")

# Sub-flows: the stages each one ends with (upstream stages run or come from cache).
_SUBFLOW_STAGES = {
    "data": ("collect", "filter", "dedup", "scrub", "align_data", "train_tokenizer"),
    "pretrain": ("pretrain",),
    "align": ("sft", "reward", "ppo"),
    "evaluate": ("evaluate", "export"),
}
SUBFLOWS: dict[str, list[str]] = {
    name: [n for n in stages if n in STAGES] for name, stages in _SUBFLOW_STAGES.items()
}


def plan(targets: list[str] | None = None) -> list[str]:
    """The stages needed for `targets` (all when None), in DAG order."""
    if not targets:
        return list(STAGES)
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
