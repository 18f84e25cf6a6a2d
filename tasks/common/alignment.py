"""The alignment data format shared by `align_data` (writes it) and `tokenizer`, `sft`, `reward`,
`judge`, `ppo`, `evaluate` (read it): file names inside an `align_data` stage folder and the row fields.

Kept here, not in `tasks/align_data.py`, so no stage imports another stage.

Roles. The built-in pairs are split by *top-level package* (so `email.mime` and `email.parser` never
straddle a split) into disjoint roles, each used by one consumer, so nothing is judged by data it was
trained on:

- `eval`   held-out prompts: evaluation only (and the tokenizer's decontamination set);
- `rm`     preference pairs the policy's reward model trains on;
- `judge`  preference pairs the independent judge reward model trains on (never seen by the policy's RM);
- `ppo`    prompts the RL stage optimises on (never seen by either reward model).

SFT trains on every role but `eval`.

Rows (all JSONL, conversational, trl's formats plus bookkeeping fields):
- SFT:  `{id, module, prompt: [msgs], completion: [msgs]}`
- prefs: `{id, module, prompt: [msgs], chosen: [msgs], rejected: [msgs], rejected_kind}`
- PPO prompts: like SFT rows (the completion is the reference answer, used for reference-based scores).

A prompt may have several preference rows (one per rejected kind, same `id`): `align_data` writes
`align_data.rejected_per_prompt` rejected answers per `rm`/`judge` prompt and one per kind per `eval`
prompt. Rows are written in a seeded hash order, so the first N rows of a file are a random sample.
"""

from __future__ import annotations

# The roles, in the order `align_data` fills them (see above); a module's role is its top-level package's.
ROLES = ("eval", "rm", "judge", "ppo")


def top_package(module: str) -> str:
    """The top-level package of a dotted module name (`email.mime.text` -> `email`): the unit of the split."""
    return module.split(".", 1)[0]


# Prompt/completion rows (trl's prompt-completion format), by split.
SFT_FILES = {"train": "sft/train.jsonl", "eval": "sft/eval.jsonl"}
# Preference rows (trl's explicit-prompt format): `train` = the `rm` role, `judge` = the judge's role,
# `eval` = held-out pairs (reward-model accuracy per rejected kind).
PREF_FILES = {"train": "prefs/train.jsonl", "eval": "prefs/eval.jsonl", "judge": "prefs/judge.jsonl"}
# Prompts (with reference answers) of the `ppo` role.
PPO_PROMPTS = "ppo/prompts.jsonl"
# `{id, text}` of every document held out for evaluation: what the tokenizer stage decontaminates against.
EVAL_DOCUMENTS = "eval_documents.jsonl"

# How a rejected answer was made. `on_policy` rejections (samples of the SFT model) are added by the
# reward and judge stages, which have the SFT model; align_data makes the others.
REJECTED_KINDS = ("other_object", "truncated", "shuffled", "generic", "on_policy")
# Stock answers that say nothing about the object: rejected kind `generic`, and the candidates
# `evaluate` picks its best constant answer from (on the training split).
GENERIC_ANSWERS = (
    "Return a list.",
    "This function returns a value.",
    "Return the result.",
    "A helper class.",
    "This module provides functions and classes.",
    "Return True if the object is valid, False otherwise.",
    "Create a new instance.",
    "See the documentation for details.",
)

# What each alignment stage reads, as align_data's row counts (its manifest's `counts`): a stage whose
# count is 0 cannot run, and the runner says so before any training (`flows/stages.py` prechecks).
NEEDED_ROWS: dict[str, tuple[str, ...]] = {
    "sft": ("sft_train",),
    "reward": ("prefs_train", "prefs_eval"),
    "judge": ("prefs_judge", "prefs_eval"),
    "ppo": ("ppo_prompts", "sft_eval"),
    "evaluate": ("sft_train", "sft_eval", "prefs_eval"),
}
# The config fields that give each count rows.
ROW_SOURCES = {
    "sft_train": "align_data.sft_datasets (trl 'messages' or 'prompt'/'completion' rows)",
    "sft_eval": "align_data.sft_datasets with eval_fraction > 0",
    "prefs_train": "align_data.pref_datasets (trl 'prompt'/'chosen'/'rejected' rows)",
    "prefs_judge": "align_data.pref_datasets with align_data.role_shares.judge > 0",
    "prefs_eval": "align_data.pref_datasets with eval_fraction > 0",
    "ppo_prompts": "align_data.sft_datasets or align_data.pref_datasets",
}


def alignment_shortfall(stage: str, has_sources: bool, counts: dict[str, int] | None) -> str | None:
    """Why `stage` cannot run on align_data's rows (`counts`: its manifest's counts, None before it ran,
    when only a config without any source tells), or None."""
    needed = NEEDED_ROWS[stage]
    if counts is None:
        if has_sources:
            return None
        missing = ["sft_train", "prefs_train"]  # nothing at all: name both kinds of dataset
        said = "no alignment data source is configured (align_data.builtin is false, no datasets)"
    else:
        missing = [name for name in needed if counts.get(name, 0) == 0]
        if not missing:
            return None
        said = f"align_data made no {', '.join(missing)} rows"
    fields = " and ".join(dict.fromkeys(ROW_SOURCES[m] for m in missing))
    return (
        f"{said}. Set {fields}, as local .jsonl/.json/.parquet files or Hub dataset ids, or set "
        "align_data.builtin: true on a corpus with pydocs documents (collect.sources kind: pydocs). "
        "Pretraining needs no alignment data: `lmforge run --flow pretrain` runs without it"
    )
