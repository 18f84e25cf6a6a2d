"""Stage `align_data`: instruction pairs and preference pairs for SFT, the reward model and PPO.

Built in and offline, from the pydocs documents (real docstrings, nothing invented): the prompt asks
what a function/method/class/module does, named by module, qualified name and signature; the answer
is the docstring's summary paragraph. Preference pairs keep that answer as `chosen` and make a
plausible wrong `rejected`: another object's summary from the same module, or the right summary cut
short or with its sentences (or words) shuffled. User datasets in trl's standard formats are added.

The train/eval split is by module (`is_eval_module`), so evaluation prompts name unseen modules, and
`eval_documents.jsonl` lists the held-out corpus documents for the tokenizer's decontamination.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conf.align_data import AlignDataConfig, DatasetSource
from tasks.common.alignment import EVAL_DOCUMENTS, PREF_FILES, SFT_FILES
from tasks.common.artifacts import Manifest
from tasks.common.data import Document, read_documents
from tasks.common.jsonl import JsonlWriter, iter_jsonl, write_jsonl
from tasks.common.splits import hash_fraction, hash_rank, is_eval_module
from tasks.common.stage import StageReport
from tasks.common.tracking import MetricLogger

log = logging.getLogger(__name__)
STAGE_VERSION = 1


class AlignDataError(ValueError):
    """A user dataset is malformed, or the built data is unusable (e.g. an empty split)."""


# ---------------------------------------------------------------------------------------------
# summaries and prompts

_PARA = re.compile(r"\n\s*\n")
_WS = re.compile(r"\s+")
_ROLE = re.compile(r":(?:py:)?[a-z]+:`~?([^`]+)`")  # :func:`x` -> `x`
_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z(`'\"*])")
_SIG_LINE = re.compile(r"^[\w.]+\(.*\)(\s*->.*)?$")  # 'S.find(sub[, start]) -> int' style first lines


def summary(text: str, max_chars: int) -> str | None:
    """The docstring's first prose paragraph, whitespace collapsed, cut at the last whole sentence that
    fits."""
    for para in _PARA.split(text.strip()):
        para = _WS.sub(" ", _ROLE.sub(r"`\1`", para)).strip()
        if not para or para.startswith(">>>") or _SIG_LINE.match(para):
            continue
        sents = split_sentences(para)
        while sents and sents[-1].endswith(":"):  # 'For example:' introduces a block we do not keep
            sents.pop()
        out = ""
        for sent in sents:
            if len(out) + len(sent) + 1 > max_chars:
                break
            out = f"{out} {sent}".strip()
        return out or None
    return None


def split_sentences(text: str) -> list[str]:
    return [s for s in _SENT.split(text) if s]


TEMPLATES = [
    "Explain what the {what} `{name}` in the Python module `{module}` does.",
    "What does the {what} `{name}` from the Python module `{module}` do?",
    "Summarize the purpose of the {what} `{name}` (Python module `{module}`).",
]
MODULE_TEMPLATES = [
    "Explain what the Python module `{module}` is for.",
    "What is the Python module `{module}` used for?",
]


def make_prompt(meta: dict[str, Any], max_signature_chars: int, seed: int = 0) -> str:
    """A question naming the object by module, qualified name and signature; phrasing varies by id hash."""
    module, kind = meta["module"], meta["kind"]
    if kind == "module" or not meta.get("qualname"):
        return MODULE_TEMPLATES[hash_rank(module, seed) % len(MODULE_TEMPLATES)].format(module=module)
    sig = meta.get("signature") or ""
    if len(sig) > max_signature_chars:
        sig = "(...)"
    name = f"{meta['qualname']}{sig}"
    if kind == "class":
        name = f"class {name}"
    template = TEMPLATES[hash_rank(f"{module}:{meta['qualname']}", seed) % len(TEMPLATES)]
    return template.format(what=kind, name=name, module=module)


# ---------------------------------------------------------------------------------------------
# rejected answers


def _norm(text: str) -> str:
    return _WS.sub(" ", text.lower()).strip()


def truncated(answer: str, rng: random.Random) -> str | None:
    """The answer cut after 35-65% of its words, with no closing punctuation: reads unfinished."""
    words = answer.split()
    if len(words) < 6:
        return None
    keep = max(2, int(len(words) * rng.uniform(0.35, 0.65)))
    return " ".join(words[:keep]).rstrip(".,;:!?")


def shuffled(answer: str, rng: random.Random) -> tuple[str, str] | None:
    """Sentences in another order, or for a single sentence its words; (text, kind) or None."""
    sents = split_sentences(answer)
    units, kind, sep = (
        (sents, "shuffled_sentences", " ") if len(sents) >= 2 else (answer.split(), "shuffled_words", " ")
    )
    if len(units) < (2 if kind == "shuffled_sentences" else 4):
        return None
    for _ in range(10):
        order = units[:]
        rng.shuffle(order)
        if order != units:
            return sep.join(order), kind
    return None


def other_object(doc_id: str, answer: str, pool: list[tuple[str, str]], rng: random.Random) -> str | None:
    """Another object's summary from the same module (a plausible, on-topic, wrong answer)."""
    words = set(_norm(answer).split())

    def distinct(other: str) -> bool:  # not a near-copy (sibling overloads often share a docstring)
        o = set(_norm(other).split())
        return len(words & o) / max(len(words | o), 1) < 0.7

    choices = [a for i, a in pool if i != doc_id and distinct(a)]
    return rng.choice(choices) if choices else None


def make_rejected(
    doc_id: str, answer: str, pool: list[tuple[str, str]], weights: dict[str, float], seed: int
) -> tuple[str, str] | None:
    """(rejected text, rejected_kind), trying the weighted first choice then the other kinds."""
    rng = random.Random(hash_rank(doc_id, seed))
    kinds = [k for k, w in weights.items() if w > 0]
    first = rng.choices(kinds, weights=[weights[k] for k in kinds])[0]
    for kind in [first, *[k for k in kinds if k != first]]:
        if kind == "other_object":
            out = other_object(doc_id, answer, pool, rng)
            result = (out, kind) if out else None
        elif kind == "truncated":
            out = truncated(answer, rng)
            result = (out, kind) if out else None
        else:
            result = shuffled(answer, rng)
        if result and _norm(result[0]) != _norm(answer):
            return result
    return None


# ---------------------------------------------------------------------------------------------
# built-in pairs


@dataclass
class Pair:
    id: str
    module: str
    prompt: str
    answer: str
    rejected: str | None = None
    rejected_kind: str | None = None


def builtin_pairs(cfg: AlignDataConfig, docs: list[Document], counts: Counter) -> list[Pair]:
    """Instruction pairs (with a rejected answer where one can be made) from pydocs documents."""
    pairs: list[Pair] = []
    seen_prompts: set[str] = set()
    for doc in docs:
        meta = doc.meta or {}
        if meta.get("kind") not in cfg.kinds:
            counts["skipped_kind"] += 1
            continue
        answer = summary(doc.text, cfg.max_response_chars)
        if not answer or len(answer) < cfg.min_response_chars:
            counts["skipped_no_summary"] += 1
            continue
        prompt = make_prompt(meta, cfg.max_signature_chars, cfg.seed)
        if prompt in seen_prompts:  # the same name defined twice (platform branches)
            counts["skipped_duplicate_prompt"] += 1
            continue
        seen_prompts.add(prompt)
        pairs.append(Pair(doc.id, meta["module"], prompt, answer))
    if cfg.max_pairs and len(pairs) > cfg.max_pairs:
        keep = {p.id for p in sorted(pairs, key=lambda p: hash_rank(p.id, cfg.seed))[: cfg.max_pairs]}
        pairs = [p for p in pairs if p.id in keep]

    by_module: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for p in pairs:
        by_module[p.module].append((p.id, p.answer))
    for p in pairs:
        made = make_rejected(p.id, p.answer, by_module[p.module], cfg.rejected_weights, cfg.seed)
        if made is None:
            counts["no_rejected"] += 1
        else:
            p.rejected, p.rejected_kind = made
    return pairs


# ---------------------------------------------------------------------------------------------
# user datasets


def _read_rows(src: DatasetSource) -> tuple[str, list[dict[str, Any]]]:
    """(where, rows): local JSONL/JSON/Parquet read directly (errors name file:line), else the Hub."""
    if src.is_local:
        path = Path(src.path).expanduser()
        if not path.is_file():
            raise AlignDataError(f"dataset file {path} does not exist (align_data dataset path {src.path!r})")
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return str(path), pq.read_table(path).to_pylist()[: src.max_rows]
        if path.suffix == ".json" and path.read_text(encoding="utf-8").lstrip().startswith("["):
            return str(path), json.loads(path.read_text(encoding="utf-8"))[: src.max_rows]
        rows = []
        try:
            for _, row in iter_jsonl(path):
                rows.append(row)
                if src.max_rows and len(rows) >= src.max_rows:
                    break
        except ValueError as e:  # a line that is not JSON: the message names path:line
            raise AlignDataError(str(e)) from e
        return str(path), rows
    from datasets import load_dataset

    ds = load_dataset(src.path, src.name, split=src.split, revision=src.revision)
    if src.max_rows:
        ds = ds.select(range(min(src.max_rows, len(ds))))
    return f"{src.path}[{src.split}]", ds.to_list()


def _messages(value: Any, role: str, where: str, field: str) -> list[dict[str, str]]:
    """A string or a list of {role, content} messages, as a message list."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if (
        isinstance(value, list)
        and value
        and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)
    ):
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in value]
    raise AlignDataError(f"{where}: field {field!r} must be a string or a list of {{role, content}} messages")


def sft_record(row: dict[str, Any], where: str) -> tuple[list[dict], list[dict]]:
    """(prompt messages, completion messages) from a `messages` or `prompt`/`completion` row."""
    if "messages" in row:
        msgs = _messages(row["messages"], "user", where, "messages")
        if msgs[-1]["role"] != "assistant" or len(msgs) < 2:
            raise AlignDataError(f"{where}: 'messages' must end with an assistant message after a prompt")
        return msgs[:-1], msgs[-1:]
    missing = [f for f in ("prompt", "completion") if f not in row]
    if missing:
        raise AlignDataError(
            f"{where}: missing field {missing[0]!r}: "
            "an SFT row needs 'messages', or 'prompt' and 'completion' "
            f"(row has: {', '.join(sorted(row)) or 'nothing'})"
        )
    return _messages(row["prompt"], "user", where, "prompt"), _messages(
        row["completion"], "assistant", where, "completion"
    )


def pref_record(row: dict[str, Any], where: str) -> tuple[list[dict], list[dict], list[dict]]:
    """(prompt, chosen, rejected) message lists; an implicit prompt is the shared leading messages."""
    missing = [f for f in ("chosen", "rejected") if f not in row]
    if missing:
        raise AlignDataError(
            f"{where}: missing field {missing[0]!r}: "
            "a preference row needs 'prompt', 'chosen' and 'rejected' "
            f"(row has: {', '.join(sorted(row)) or 'nothing'})"
        )
    if "prompt" in row:
        return (
            _messages(row["prompt"], "user", where, "prompt"),
            _messages(row["chosen"], "assistant", where, "chosen"),
            _messages(row["rejected"], "assistant", where, "rejected"),
        )
    if isinstance(row["chosen"], str):
        raise AlignDataError(
            f"{where}: missing field 'prompt' (needed when 'chosen' and 'rejected' are strings)"
        )
    chosen = _messages(row["chosen"], "user", where, "chosen")
    rejected = _messages(row["rejected"], "user", where, "rejected")
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        raise AlignDataError(
            f"{where}: missing field 'prompt' ('chosen' and 'rejected' share no leading messages)"
        )
    return chosen[:n], chosen[n:], rejected[n:]


def _split_of(prompt: list[dict], fraction: float, seed: int) -> str:
    """'eval' for about `fraction` of user rows, by a hash of the prompt, so equal prompts never straddle
    the split."""
    return "eval" if hash_fraction(json.dumps(prompt, sort_keys=True), seed) < fraction else "train"


def user_records(
    sources: list[DatasetSource], kind: str, cfg: AlignDataConfig, counts: Counter
) -> dict[str, list[dict]]:
    """User rows converted to our record format and split by prompt hash."""
    out: dict[str, list[dict]] = {"train": [], "eval": []}
    for src in sources:
        where, rows = _read_rows(src)
        if not rows:
            raise AlignDataError(f"{where}: the dataset has no rows")
        fraction = cfg.eval_fraction if src.eval_fraction is None else src.eval_fraction
        for i, row in enumerate(rows):
            at = f"{where}: row {i + 1}"
            if not isinstance(row, dict):
                raise AlignDataError(f"{at}: expected a JSON object, got {type(row).__name__}")
            rec: dict[str, Any] = {"id": f"{src.tag}:{i}", "module": f"user:{src.tag}"}
            if kind == "sft":
                rec["prompt"], rec["completion"] = sft_record(row, at)
            else:
                rec["prompt"], rec["chosen"], rec["rejected"] = pref_record(row, at)
                rec["rejected_kind"] = "user"
            out[_split_of(rec["prompt"], fraction, cfg.seed)].append(rec)
        counts[f"user_{kind}_{src.tag}"] = len(rows)
    return out


# ---------------------------------------------------------------------------------------------
# the stage


def _user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def _assistant(content: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": content}]


Splits = dict[str, list[dict]]  # "train" / "eval" -> records


def align_data(
    cfg: AlignDataConfig, inputs: dict[str, Manifest], out: Path, log_: MetricLogger
) -> StageReport:
    """Hold out the eval modules' documents, build the pairs, add the user datasets, write both splits."""
    counts: Counter = Counter()
    docs = hold_out_documents(cfg, inputs, out / EVAL_DOCUMENTS, counts)
    sft: Splits = {"train": [], "eval": []}
    prefs: Splits = {"train": [], "eval": []}
    modules: dict[str, set[str]] = {"train": set(), "eval": set()}
    if cfg.builtin:
        add_builtin_records(cfg, builtin_pairs(cfg, docs, counts), sft, prefs, modules)
    for split, recs in user_records(cfg.sft_datasets, "sft", cfg, counts).items():
        sft[split].extend(recs)
    for split, recs in user_records(cfg.pref_datasets, "prefs", cfg, counts).items():
        prefs[split].extend(recs)
    write_splits(cfg, out, sft, prefs, modules, counts)
    log_sample(log_, prefs["train"][:20])
    log.info("align_data: %s", dict(counts))
    return StageReport(
        counts=dict(counts),
        metrics=pair_metrics(sft, counts),
        extra={"eval_modules": sorted(modules["eval"]), "files": {**SFT_FILES, **PREF_FILES}},
    )


def hold_out_documents(
    cfg: AlignDataConfig, inputs: dict[str, Manifest], eval_path: Path, counts: Counter
) -> list[Document]:
    """List the eval modules' documents in `eval_path` (what the tokenizer decontaminates against) and
    return the pydocs-like documents (with a module), the only ones that can become pairs."""
    docs = []
    with JsonlWriter(eval_path) as held_out:
        for manifest in inputs.values():
            for doc in read_documents(manifest):
                module = (doc.meta or {}).get("module")
                if module and is_eval_module(module, cfg.eval_fraction, cfg.seed):
                    held_out.write({"id": doc.id, "text": doc.text})
                counts["documents_in"] += 1
                if module:  # keep no other documents in memory
                    docs.append(doc)
    counts["eval_documents"] = held_out.count
    return docs


def add_builtin_records(
    cfg: AlignDataConfig, pairs: list[Pair], sft: Splits, prefs: Splits, modules: dict[str, set[str]]
) -> None:
    """Each pair as an SFT record and (when it has a rejected answer) a preference record, split by module."""
    for p in pairs:
        split = "eval" if is_eval_module(p.module, cfg.eval_fraction, cfg.seed) else "train"
        modules[split].add(p.module)
        base = {"id": p.id, "module": p.module, "prompt": _user(p.prompt)}
        sft[split].append({**base, "completion": _assistant(p.answer)})
        if p.rejected is not None:
            prefs[split].append(
                {
                    **base,
                    "chosen": _assistant(p.answer),
                    "rejected": _assistant(p.rejected),
                    "rejected_kind": p.rejected_kind,
                }
            )


def write_splits(
    cfg: AlignDataConfig, out: Path, sft: Splits, prefs: Splits, modules: dict[str, set[str]], counts: Counter
) -> None:
    """The SFT and preference files of both splits, with their counts; an empty split fails the stage."""
    for split in ("train", "eval"):
        if not sft[split] and not prefs[split]:
            raise AlignDataError(
                f"align_data made no {split} pairs ({len(modules['train'] | modules['eval'])} modules, "
                f"eval_fraction={cfg.eval_fraction}): "
                "collect more documents or change align_data.eval_fraction/seed"
            )
        write_jsonl(out / SFT_FILES[split], sft[split])
        write_jsonl(out / PREF_FILES[split], prefs[split])
        counts[f"sft_{split}"] = len(sft[split])
        counts[f"prefs_{split}"] = len(prefs[split])
        counts[f"modules_{split}"] = len(modules[split])
        for kind, n in Counter(r["rejected_kind"] for r in prefs[split]).items():
            counts[f"rejected_{kind}_{split}"] = n


def pair_metrics(sft: Splits, counts: Counter) -> dict[str, float]:
    answers = [r["completion"][-1]["content"] for s in sft.values() for r in s]
    prompts = [r["prompt"][-1]["content"] for s in sft.values() for r in s]
    return {
        "mean_prompt_chars": sum(map(len, prompts)) / max(len(prompts), 1),
        "mean_response_chars": sum(map(len, answers)) / max(len(answers), 1),
        "eval_pair_share": counts["sft_eval"] / max(counts["sft_train"] + counts["sft_eval"], 1),
    }


def log_sample(log_: MetricLogger, sample: list[dict]) -> None:
    """A few preference pairs as an MLflow table, to read what the rejected answers look like."""
    if sample:
        log_.log_table(
            {
                "prompt": [r["prompt"][-1]["content"] for r in sample],
                "chosen": [r["chosen"][-1]["content"] for r in sample],
                "rejected": [r["rejected"][-1]["content"] for r in sample],
                "rejected_kind": [r["rejected_kind"] for r in sample],
            },
            "align_data/sample_prefs.json",
        )
