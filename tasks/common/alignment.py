"""The alignment data format shared by `align_data` (writes it) and `sft`, `reward`, `ppo`, `evaluate`,
`tokenizer` (read it): file names inside an `align_data` stage folder and the row fields.

Kept here, not in `tasks/align_data.py`, so no stage imports another stage.
"""

from __future__ import annotations

# Prompt/completion rows (trl's prompt-completion format), by split.
SFT_FILES = {"train": "sft/train.jsonl", "eval": "sft/eval.jsonl"}
# Preference rows `{prompt, chosen, rejected, ...}` (trl's explicit-prompt format), by split.
PREF_FILES = {"train": "prefs/train.jsonl", "eval": "prefs/eval.jsonl"}
# `{id, text}` of every document held out for evaluation: what the tokenizer stage decontaminates against.
EVAL_DOCUMENTS = "eval_documents.jsonl"
