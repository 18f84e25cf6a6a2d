"""Stage `align_data`: instruction pairs and preference pairs for SFT, the reward model, the judge and PPO.

Built in and offline, from the pydocs documents (real docstrings, nothing invented): the prompt asks
what a function/method/class/module does, named by module, qualified name and signature; the answer
is the docstring's summary paragraph. Preference pairs keep that answer as `chosen` and make a
plausible wrong `rejected` of a balanced kind: another object's summary (length-matched), the right
summary cut short, its sentences (or words) shuffled, or a generic stock answer. No kind differs from
the chosen answer in form (length, final punctuation, leading capital): a reward model must read the
content (`tests/test_align_data.py` checks that form alone predicts no better than chance).

The pairs are split by top-level package into the roles of `tasks/common/alignment.py` (eval, rm,
judge, ppo), so no evaluation prompt names a package any training role saw and the judge never saw the
reward model's prompts; `eval_documents.jsonl` lists the eval packages' documents for the tokenizer's
decontamination. User datasets in trl's standard formats are added (see `AlignDataConfig`).
"""

from __future__ import annotations

import bisect
import functools
import itertools
import json
import logging
import math
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conf.align_data import AlignDataConfig, DatasetSource
from tasks.common.alignment import (
    EVAL_DOCUMENTS,
    GENERIC_ANSWERS,
    PPO_PROMPTS,
    PREF_FILES,
    ROLES,
    SFT_FILES,
    top_package,
)
from tasks.common.artifacts import Manifest
from tasks.common.data import Document, read_documents
from tasks.common.jsonl import JsonlWriter, iter_jsonl, write_jsonl
from tasks.common.splits import hash_fraction, hash_rank
from tasks.common.stage import StageReport
from tasks.common.tracking import MetricLogger

log = logging.getLogger(__name__)
STAGE_VERSION = 3
USER_MODULE = "user:"  # the `module` of a user row: "user:<dataset tag>"


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


@dataclass
class Pair:
    """A built-in instruction pair: the object's id and module, the question, the docstring summary."""

    id: str
    module: str
    prompt: str
    answer: str


# ---------------------------------------------------------------------------------------------
# rejected answers
#
# Every kind keeps the chosen answer's form, so only the content tells them apart: truncations keep
# the final punctuation, shuffled words keep the leading capital and the final punctuation, other
# objects' summaries and most generic answers are picked by length (generic ones by sentence count
# too). Truncations and single stock answers are mostly shorter than the chosen answer; with
# `balance_lengths` each gets a mirror, an other-object or generic rejection longer than its answer by
# the inverse ratio (`mirror_shorter`), so "the longer answer is right" is no better than chance.

TRUNCATE_RANGE = (0.5, 0.8)  # share of the words a truncation keeps
SINGLE_GENERIC_SHARE = 1 / 3  # generic rejections that are one stock answer as is (the rest: length-matched)
LENGTH_MATCHED = ("other_object", "generic")  # kinds made to a target length (after the others)
_PLAIN_LOWER = re.compile(r"[a-z]+")  # a word that may lead a sentence, capitalised
_PLAIN_TITLE = re.compile(r"[A-Z][a-z]+")


def _norm(text: str) -> str:
    return _WS.sub(" ", text.lower()).strip()


def final_punctuation(text: str) -> str:
    return text[-1] if text and text[-1] in ".!?" else ""


def _balanced(text: str) -> bool:
    """No open backtick or parenthesis: a cut inside `code` reads broken in a way a length cue does not."""
    return text.count("`") % 2 == 0 and text.count("(") == text.count(")")


def truncated(answer: str, rng: random.Random, min_chars: int = 20) -> str | None:
    """The answer cut after 50-80% of its words (never inside `code` or parentheses, never below
    `min_chars`, the shortest answer), its final punctuation put back: it ends like a finished answer
    and lacks the rest of the content."""
    words = answer.split()
    if len(words) < 6:
        return None
    lo, hi = TRUNCATE_RANGE
    cuts = [
        k
        for k in range(max(3, math.ceil(len(words) * lo)), int(len(words) * hi) + 1)
        if _balanced(" ".join(words[:k])) and len(" ".join(words[:k])) >= min_chars
    ]
    if not cuts:
        return None
    return " ".join(words[: rng.choice(cuts)]).rstrip(".,;:!?-") + final_punctuation(answer)


def _shuffle(units: list[str], rng: random.Random) -> list[str] | None:
    for _ in range(10):
        order = units[:]
        rng.shuffle(order)
        if order != units:
            return order
    return None


def shuffled(answer: str, rng: random.Random) -> str | None:
    """Sentences in another order, or for a single sentence its words, with the first word's capital
    and the final punctuation where they were: wrong word order is the only sign."""
    sents = split_sentences(answer)
    if len(sents) >= 2:
        order = _shuffle(sents, rng)
        return " ".join(order) if order else None
    end = final_punctuation(answer)
    words = (answer[: -len(end)] if end else answer).split()
    if len(words) < 4:
        return None
    order = _shuffle(words, rng)
    if order is None:
        return None
    first = words[0]
    if _PLAIN_TITLE.fullmatch(first) and order[0] != first:  # 'Return' moved inside: 'return'
        order[order.index(first)] = first.lower()
        plain = [i for i, w in enumerate(order) if _PLAIN_LOWER.fullmatch(w)]
        if plain:  # a plain word leads, capitalised (not `code`, which the answer did not start with)
            order.insert(0, order.pop(plain[0]).capitalize())
    return " ".join(order) + end


def _similar(a: str, b: str) -> bool:
    """Near-copies (sibling overloads often share a docstring) make no wrong answer."""
    wa, wb = set(_norm(a).split()), set(_norm(b).split())
    return len(wa & wb) / max(len(wa | wb), 1) >= 0.7


class AnswerPool:
    """Answers sorted by length, to find the one closest in length to a target quickly."""

    def __init__(self, answers: list[tuple[str, str]]):
        self.items = sorted(answers, key=lambda a: (len(a[1]), a[0]))
        self.lengths = [len(a) for _, a in self.items]

    def closest(self, target: float, answer: str, exclude: str) -> str | None:
        """The answer closest in (log) length to `target` that is not `exclude`'s nor a near-copy."""
        hi = bisect.bisect_left(self.lengths, target)
        lo = hi - 1
        while lo >= 0 or hi < len(self.items):
            below = math.log(target / max(self.lengths[lo], 1)) if lo >= 0 else math.inf
            above = math.log(self.lengths[hi] / target) if hi < len(self.items) else math.inf
            i = lo if below <= above else hi
            lo, hi = (lo - 1, hi) if i == lo else (lo, hi + 1)
            doc_id, other = self.items[i]
            if doc_id != exclude and not _similar(other, answer):
                return other
        return None


def other_object(doc_id: str, answer: str, target: float, pools: list[AnswerPool]) -> str | None:
    """Another object's summary, as close as possible to `target` characters: from the same module when
    one there is within 25% of it, else from the same top-level package, else from the same role."""
    best = None
    for pool in pools:
        found = pool.closest(target, answer, doc_id)
        if found is not None:
            best = found
            if abs(math.log(len(found) / target)) <= math.log(1.25):
                return found
    return best


def _in_sentences(answers: tuple[str, ...], sentences: int) -> str:
    """Stock answers as `sentences` sentences, the answers of one sentence joined by semicolons:
    'Return the result; see the documentation for details.'"""
    size = math.ceil(len(answers) / sentences)
    groups = [answers[i : i + size] for i in range(0, len(answers), size)]
    return " ".join(
        "; ".join([g[0].rstrip("."), *(a[0].lower() + a[1:].rstrip(".") for a in g[1:])]) + "."
        for g in groups
    )


def _runs(n: int) -> list[tuple[str, ...]]:
    """Runs of `n` different stock answers: every order for up to 3, each set once (in a seeded order)
    for more."""
    if n <= 3:
        return list(itertools.permutations(GENERIC_ANSWERS, n))
    out = []
    for combo in itertools.combinations(GENERIC_ANSWERS, n):
        run = list(combo)
        random.Random(hash_rank("|".join(run))).shuffle(run)
        out.append(tuple(run))
    return out


@functools.cache
def _generic_candidates(sentences: int) -> tuple[list[int], list[str]]:
    """Generic answers of `sentences` sentences (1 to 3), sorted by length: runs of stock answers (up to
    all of them), so a long chosen answer gets a generic answer of its length and sentence count."""
    runs = {
        _in_sentences(r, sentences)
        for n in range(sentences, len(GENERIC_ANSWERS) + 1)
        if math.ceil(n / math.ceil(n / sentences)) == sentences
        for r in _runs(n)
    }
    ordered = sorted(runs, key=lambda r: (len(r), r))
    return [len(r) for r in ordered], ordered


def stock_answer(answer: str, rng: random.Random) -> str | None:
    """One stock answer as it is (each as often as the others): each must be seen as wrong on its own
    (a policy that collapses onto one says exactly that), not only inside runs that match an answer's
    length. None where it is under a third of the answer's length: too short for a mirror to balance
    (`mirror_shorter`)."""
    text = rng.choice(GENERIC_ANSWERS)
    if len(text) < len(answer) / 3:
        return None
    return text if final_punctuation(answer) else text.rstrip(".")


def generic(answer: str, target: float, rng: random.Random) -> str:
    """A stock answer (or a run of them) of about `target` characters, with the chosen answer's number of
    sentences (up to 3) and its ending."""
    lengths, runs = _generic_candidates(min(len(split_sentences(answer)), 3))
    lo, hi = bisect.bisect_left(lengths, target / 1.1), bisect.bisect_right(lengths, target * 1.1)
    if lo < hi:
        text = runs[rng.randrange(lo, hi)]
    else:
        i = bisect.bisect_left(lengths, target)
        near = [j for j in (i - 1, i) if 0 <= j < len(runs)]
        text = runs[min(near, key=lambda j: abs(math.log(lengths[j] / target)))]
    return text if final_punctuation(answer) else text.rstrip(".")


@dataclass
class Slot:
    """One rejected answer to make: its pair, its kind, and its text once made (damaged kinds are made
    first; length-matched ones wait for their target length)."""

    pair: Pair
    kind: str
    text: str | None = None
    target: float | None = None


@dataclass
class Negatives:
    """What one role's rejected answers are drawn from: its answers by module, package and role, the
    kinds' target shares, whether shorter rejections are mirrored, the shortest answer (and cut)."""

    by_module: dict[str, AnswerPool]
    by_package: dict[str, AnswerPool]
    role: AnswerPool
    weights: dict[str, float]
    balance_lengths: bool
    min_chars: int

    @classmethod
    def of(cls, pairs: list[Pair], cfg: AlignDataConfig) -> Negatives:
        modules: dict[str, list[tuple[str, str]]] = defaultdict(list)
        packages: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for p in pairs:
            modules[p.module].append((p.id, p.answer))
            packages[top_package(p.module)].append((p.id, p.answer))
        return cls(
            {m: AnswerPool(a) for m, a in modules.items()},
            {m: AnswerPool(a) for m, a in packages.items()},
            AnswerPool([(p.id, p.answer) for p in pairs]),
            {k: v for k, v in cfg.rejected_weights.items() if v > 0},
            cfg.balance_lengths,
            cfg.min_response_chars,
        )

    def draw(self, pairs: list[Pair], per_prompt: int | None, seed: int, counts: Counter) -> list[dict]:
        """Preference rows: `per_prompt` rejected answers of different kinds per pair (None: one of every
        kind), the kinds balanced to their target shares, shorter rejections mirrored (`mirror_shorter`)."""
        slots = self.assign_kinds(pairs, per_prompt, seed)
        if self.balance_lengths:
            mirror_shorter(slots)
        rows, made = [], set()
        for slot in slots:
            p = slot.pair
            if slot.text is None:
                rng = random.Random(hash_rank(f"{p.id}:{slot.kind}", seed))
                slot.text = self.length_matched(slot, rng)
            if slot.text and _norm(slot.text) != _norm(p.answer):
                rows.append(pref_row(p, slot.text, slot.kind))
                made.add(p.id)
        counts["no_rejected"] += len({p.id for p in pairs} - made)
        return rows

    def assign_kinds(self, pairs: list[Pair], per_prompt: int | None, seed: int) -> list[Slot]:
        """The kinds of each pair's rejected answers, in a seeded order: the kind furthest below its
        target share first, among those that can be made (short answers cannot be truncated)."""
        total_w = sum(self.weights.values())
        made: Counter = Counter()
        slots = []
        for p in sorted(pairs, key=lambda p: hash_rank(p.id, seed)):
            rng = random.Random(hash_rank(p.id, seed))
            damaged = {
                "truncated": truncated(p.answer, rng, self.min_chars),
                "shuffled": shuffled(p.answer, rng),
                "generic": stock_answer(p.answer, rng) if rng.random() < SINGLE_GENERIC_SHARE else None,
            }
            damaged = {k: t for k, t in damaged.items() if t and _norm(t) != _norm(p.answer)}
            options = [k for k in self.weights if k in damaged or k in LENGTH_MATCHED]
            for _ in range(min(per_prompt or len(options), len(options))):
                n = sum(made.values()) + 1
                kind = max(options, key=lambda k: self.weights[k] / total_w * n - made[k])
                options.remove(kind)
                made[kind] += 1
                slots.append(Slot(p, kind, damaged.get(kind)))
        return slots

    def length_matched(self, slot: Slot, rng: random.Random) -> str | None:
        """An other-object or generic rejection of the slot's target length (default: the answer's)."""
        p = slot.pair
        target = slot.target or float(len(p.answer))
        if slot.kind == "generic":
            return generic(p.answer, target, rng)
        pools = [self.by_module[p.module], self.by_package[top_package(p.module)], self.role]
        return other_object(p.id, p.answer, target, pools)


def mirror_shorter(slots: list[Slot]) -> None:
    """Give each rejection made much shorter than its answer (truncations, single stock answers) a
    mirror: a length-matched slot whose answer is about as long as that rejection gets a rejection as
    much longer than its answer. The shorter answer of a pair is then the rejected one about as often
    as the longer, so "the longer answer is right" is little better than chance. (Long truncations can
    lack a mirror: few answers are long enough; they stay, the kinds stay balanced.)"""
    free = sorted((len(s.pair.answer), i) for i, s in enumerate(slots) if s.text is None)
    shorter = [s for s in slots if s.text and len(s.text) < 0.8 * len(s.pair.answer)]
    for s in sorted(shorter, key=lambda s: -len(s.text or "")):  # long ones have the fewest mirrors
        short, full = len(s.text or ""), len(s.pair.answer)
        j = bisect.bisect_left(free, (short, -1))
        near = [k for k in (j - 1, j) if 0 <= k < len(free)]
        k = min(near, key=lambda k: abs(math.log(free[k][0] / short)), default=-1)
        if k >= 0 and abs(math.log(free[k][0] / short)) <= math.log(1.5):
            length, i = free.pop(k)
            slots[i].target = length * full / short


# ---------------------------------------------------------------------------------------------
# built-in pairs and their roles


def builtin_pairs(cfg: AlignDataConfig, docs: list[Document], counts: Counter) -> list[Pair]:
    """Instruction pairs from pydocs documents (one per object with a usable summary)."""
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
    return pairs


def assign_roles(pairs_per_package: dict[str, int], cfg: AlignDataConfig) -> dict[str, str]:
    """Each top-level package's role. Packages in a seeded hash order fill the roles' shares of the
    pairs in turn (eval first), a package going where the middle of its pairs falls: whole packages, so
    no role shares a package with another, and shares close to the config even though one package
    (idlelib, tkinter) can hold 8% of the pairs."""
    shares: dict[str, float] = dict(cfg.role_shares)
    bounds, edge = [("eval", cfg.eval_fraction)], cfg.eval_fraction
    for role in ROLES[1:]:
        edge += (1 - cfg.eval_fraction) * shares.get(role, 0.0) / sum(shares.values())
        bounds.append((role, edge))
    total = sum(pairs_per_package.values())
    roles, done = {}, 0
    for pkg in sorted(pairs_per_package, key=lambda k: hash_rank(k, cfg.seed)):
        n = pairs_per_package[pkg]
        middle = (done + n / 2) / total if total else hash_fraction(pkg, cfg.seed)
        roles[pkg] = next((r for r, b in bounds if middle < b), ROLES[-1])
        done += n
    return roles


def _user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def _assistant(content: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": content}]


def sft_row(p: Pair) -> dict[str, Any]:
    return {"id": p.id, "module": p.module, "prompt": _user(p.prompt), "completion": _assistant(p.answer)}


def pref_row(p: Pair, rejected: str, kind: str) -> dict[str, Any]:
    return {
        "id": p.id,
        "module": p.module,
        "prompt": _user(p.prompt),
        "chosen": _assistant(p.answer),
        "rejected": _assistant(rejected),
        "rejected_kind": kind,
    }


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
        split: dict[str, list[dict]] = {"train": [], "eval": []}
        for i, row in enumerate(rows):
            at = f"{where}: row {i + 1}"
            if not isinstance(row, dict):
                raise AlignDataError(f"{at}: expected a JSON object, got {type(row).__name__}")
            rec: dict[str, Any] = {"id": f"{src.tag}:{i}", "module": f"{USER_MODULE}{src.tag}"}
            if kind == "sft":
                rec["prompt"], rec["completion"] = sft_record(row, at)
            else:
                rec["prompt"], rec["chosen"], rec["rejected"] = pref_record(row, at)
                rec["rejected_kind"] = "user"
            split[_split_of(rec["prompt"], fraction, cfg.seed)].append(rec)
        out["train"] += weighted(split["train"], src.weight, cfg.seed)
        out["eval"] += split["eval"]
        counts[f"user_{kind}_{src.tag}"] = len(rows)
        counts["user_rows"] += len(rows)
    return out


# ---------------------------------------------------------------------------------------------
# the stage

Files = dict[str, list[dict]]  # a file of the stage folder (alignment.SFT_FILES, ...) -> its rows


def align_data(
    cfg: AlignDataConfig, inputs: dict[str, Manifest], out: Path, log_: MetricLogger
) -> StageReport:
    """Build the pairs, give each top-level package a role, draw each role's rejected answers, add the
    user datasets (mixed by weight), list every held-out row's text for decontamination, write every
    file. No data at all is no error here: pretraining needs none (the alignment stages' prechecks fail)."""
    counts: Counter = Counter()
    docs = module_documents(inputs, counts) if cfg.builtin else []
    pairs = builtin_pairs(cfg, docs, counts) if cfg.builtin else []
    per_package = Counter({top_package(d.meta["module"]): 0 for d in docs})
    per_package.update(top_package(p.module) for p in pairs)
    roles = assign_roles(dict(per_package), cfg)
    by_role: dict[str, list[Pair]] = {
        r: [p for p in pairs if roles[top_package(p.module)] == r] for r in ROLES
    }
    files = builtin_files(cfg, by_role, counts)
    add_user_rows(cfg, files, bool(by_role["judge"]), bool(by_role["ppo"]), counts)
    write_eval_documents(docs, roles, files, out / EVAL_DOCUMENTS, counts)
    note = write_files(cfg, out, files, counts)
    count_roles(by_role, roles, counts)
    log_sample(log_, files[PREF_FILES["train"]][:20])
    log.info("align_data: %s", dict(counts))
    return StageReport(
        counts=dict(counts),
        metrics={**pair_metrics(files, counts), **form_metrics(files[PREF_FILES["train"]])},
        extra={
            "eval_modules": sorted({p.module for p in by_role["eval"]}),
            "packages": {r: sorted(k for k, v in roles.items() if v == r) for r in ROLES},
            "files": {**SFT_FILES, **PREF_FILES, "ppo_prompts": PPO_PROMPTS},
            **({"note": note} if note else {}),
        },
    )


def module_documents(inputs: dict[str, Manifest], counts: Counter) -> list[Document]:
    """The pydocs-like documents (with a module): the only ones that can become pairs or be held out."""
    docs = []
    for manifest in inputs.values():
        for doc in read_documents(manifest):
            counts["documents_in"] += 1
            if (doc.meta or {}).get("module"):  # keep no other documents in memory
                docs.append(doc)
    return docs


def write_eval_documents(
    docs: list[Document], roles: dict[str, str], files: Files, path: Path, counts: Counter
) -> None:
    """List what evaluation reads, for the tokenizer to decontaminate the pretraining data against: the
    eval packages' documents and the text of every held-out user row (all its messages)."""
    with JsonlWriter(path) as held_out:
        for doc in docs:
            if roles[top_package(doc.meta["module"])] == "eval":
                held_out.write({"id": doc.id, "text": doc.text})
        builtin = held_out.count
        seen = set()
        for name in (SFT_FILES["eval"], PREF_FILES["eval"]):
            for row in files[name]:
                if not row["module"].startswith(USER_MODULE) or row["id"] in seen:
                    continue
                seen.add(row["id"])
                held_out.write({"id": row["id"], "text": row_text(row)})
    counts["eval_documents"] = held_out.count
    counts["eval_documents_user"] = held_out.count - builtin


def row_text(row: dict[str, Any]) -> str:
    """Every message content of an SFT or preference row, one per line."""
    fields = ("prompt", "completion", "chosen", "rejected")
    return "\n".join(m["content"] for f in fields for m in row.get(f, []))


def builtin_files(cfg: AlignDataConfig, by_role: dict[str, list[Pair]], counts: Counter) -> Files:
    """Every role's rows: SFT on all roles but eval, the rm's and the judge's pairs (each drawn from its
    own role's answers, the judge's with its own seed), one pair per kind per eval prompt, PPO prompts;
    the training files weighted by `builtin_weight`."""

    def draw(role: str, per_prompt: int | None, seed: int) -> list[dict]:
        return Negatives.of(by_role[role], cfg).draw(by_role[role], per_prompt, seed, counts)

    def train(rows: list[dict]) -> list[dict]:
        return weighted(rows, cfg.builtin_weight, cfg.seed)

    return {
        SFT_FILES["train"]: train([sft_row(p) for r in ("rm", "judge", "ppo") for p in by_role[r]]),
        SFT_FILES["eval"]: [sft_row(p) for p in by_role["eval"]],
        PREF_FILES["train"]: train(draw("rm", cfg.rejected_per_prompt, cfg.seed)),
        PREF_FILES["judge"]: train(draw("judge", cfg.rejected_per_prompt, cfg.judge_seed)),
        PREF_FILES["eval"]: draw("eval", None, cfg.seed),
        PPO_PROMPTS: train([sft_row(p) for p in by_role["ppo"]]),
    }


def weighted(rows: list[dict], weight: float, seed: int) -> list[dict]:
    """The rows mixed in at `weight`: each row `int(weight)` times, plus once more for the share
    `weight % 1` of prompts (by a seeded prompt hash, so a prompt's preference rows stay together);
    repeats get an id suffix `~k`. Weight 1 returns the rows as they are."""
    if weight == 1.0:
        return rows
    whole, part = int(weight), weight - int(weight)
    out = []
    for row in rows:
        for k in range(whole + (_prompt_fraction(row, seed) < part)):
            out.append(row if k == 0 else {**row, "id": f"{row['id']}~{k}"})
    return out


def add_user_rows(
    cfg: AlignDataConfig, files: Files, has_judge: bool, has_ppo: bool, counts: Counter
) -> None:
    """The user datasets, split train/eval by prompt hash, training rows weighted: SFT rows to sft/,
    preference rows to the rm role. With no built-in judge pairs the judge takes a seeded share of the
    user preference rows (gone from the rm role); with no built-in PPO prompts, PPO gets the user SFT
    training rows, or with none of those a seeded share of the preference rows (see AlignDataConfig)."""
    sft = user_records(cfg.sft_datasets, "sft", cfg, counts)
    prefs = user_records(cfg.pref_datasets, "prefs", cfg, counts)
    files[SFT_FILES["train"]] += sft["train"]
    files[SFT_FILES["eval"]] += sft["eval"]
    files[PREF_FILES["eval"]] += prefs["eval"]
    shares = {"rm": cfg.role_shares["rm"]}
    if not has_judge:
        shares["judge"] = cfg.role_shares.get("judge", 0.0)
    if not has_ppo and not sft["train"]:
        shares["ppo"] = cfg.role_shares.get("ppo", 0.0)
    split = split_user_prefs(prefs["train"], shares, cfg.judge_seed)
    files[PREF_FILES["train"]] += split["rm"]
    files[PREF_FILES["judge"]] += split.get("judge", [])
    if not has_ppo:
        files[PPO_PROMPTS] += sft["train"] or [ppo_prompt(r) for r in split.get("ppo", [])]


def split_user_prefs(rows: list[dict], shares: dict[str, float], seed: int) -> dict[str, list[dict]]:
    """User preference rows shared by the roles in `shares` (rm first, then judge, then ppo) by a seeded
    hash of the prompt: all rows of one prompt go to one role."""
    total = sum(shares.values())
    bounds, edge = [], 0.0
    for role, share in shares.items():
        edge += share / total
        bounds.append((role, edge))
    out: dict[str, list[dict]] = {role: [] for role in shares}
    for row in rows:
        x = _prompt_fraction(row, seed)
        out[next((r for r, b in bounds if x < b), bounds[-1][0])].append(row)
    return out


def ppo_prompt(row: dict[str, Any]) -> dict[str, Any]:
    """A preference row as a PPO prompt: its chosen answer is the reference."""
    return {"id": row["id"], "module": row["module"], "prompt": row["prompt"], "completion": row["chosen"]}


def _prompt_fraction(row: dict, seed: int) -> float:
    return hash_fraction(json.dumps(row["prompt"], sort_keys=True), seed)


NO_DATA = (
    "no alignment data: the built-in pairs gave none (they need pydocs documents with docstrings; "
    "align_data.builtin={builtin}) and align_data.sft_datasets / align_data.pref_datasets are empty. "
    "Pretraining needs none; the alignment stages (sft, reward, judge, ppo, evaluate) do: set "
    "align_data.sft_datasets (trl 'messages' or 'prompt'/'completion' rows) and align_data.pref_datasets "
    "('prompt'/'chosen'/'rejected' rows), local .jsonl/.json/.parquet files or Hub dataset ids"
)


def write_files(cfg: AlignDataConfig, out: Path, files: Files, counts: Counter) -> str | None:
    """Every file in a seeded hash order (the first rows are a random sample, not one module), with its
    counts. No data at all gives empty files and a note (returned); data without a train or an eval
    split fails the stage."""
    note = None
    if not any(files.values()):
        note = NO_DATA.format(builtin=cfg.builtin)
        log.warning("align_data: %s", note)
    else:
        for split in ("train", "eval"):
            if not files[SFT_FILES[split]] and not files[PREF_FILES[split]]:
                raise AlignDataError(
                    f"align_data made no {split} pairs (eval_fraction={cfg.eval_fraction}, role_shares="
                    f"{dict(cfg.role_shares)}, {counts['user_rows']} user rows): change "
                    "align_data.eval_fraction/seed (or a dataset's eval_fraction), or add data"
                )
    names = {
        SFT_FILES["train"]: "sft_train",
        SFT_FILES["eval"]: "sft_eval",
        PREF_FILES["train"]: "prefs_train",
        PREF_FILES["judge"]: "prefs_judge",
        PREF_FILES["eval"]: "prefs_eval",
        PPO_PROMPTS: "ppo_prompts",
    }
    for name, rows in files.items():
        rows.sort(key=lambda r: hash_rank(f"{r['id']}:{r.get('rejected_kind', '')}", cfg.seed))
        write_jsonl(out / name, rows)
        counts[names[name]] = len(rows)
        split = names[name].removeprefix("prefs_")
        for kind, n in Counter(r["rejected_kind"] for r in rows if "rejected_kind" in r).items():
            counts[f"rejected_{kind}_{split}"] = n
    for role in ("judge", "ppo"):
        if note is None and not files[PREF_FILES["judge"] if role == "judge" else PPO_PROMPTS]:
            log.warning("align_data: the %s role has no rows (role_shares=%s)", role, dict(cfg.role_shares))
    return note


def count_roles(by_role: dict[str, list[Pair]], roles: dict[str, str], counts: Counter) -> None:
    for role in ROLES:
        counts[f"prompts_{role}"] = len(by_role[role])
        counts[f"modules_{role}"] = len({p.module for p in by_role[role]})
        counts[f"packages_{role}"] = sum(v == role for v in roles.values())


def pair_metrics(files: Files, counts: Counter) -> dict[str, float]:
    sft = files[SFT_FILES["train"]] + files[SFT_FILES["eval"]]
    answers = [r["completion"][-1]["content"] for r in sft]
    prompts = [r["prompt"][-1]["content"] for r in sft]
    return {
        "mean_prompt_chars": sum(map(len, prompts)) / max(len(prompts), 1),
        "mean_response_chars": sum(map(len, answers)) / max(len(answers), 1),
        "eval_pair_share": counts["sft_eval"] / max(counts["sft_train"] + counts["sft_eval"], 1),
    }


def form_metrics(prefs: list[dict]) -> dict[str, float]:
    """How the reward model's rejected answers compare in form with the chosen ones: the share longer
    than the chosen answer (0.5 = length tells nothing) and the mean length ratio per kind."""
    if not prefs:
        return {}
    ratios: dict[str, list[float]] = defaultdict(list)
    for r in prefs:
        ratio = len(r["rejected"][-1]["content"]) / max(len(r["chosen"][-1]["content"]), 1)
        ratios[r["rejected_kind"]].append(ratio)
    every = [x for xs in ratios.values() for x in xs]
    out = {"rejected_longer_share": sum(x > 1 for x in every) / len(every)}
    out.update({f"length_ratio_{k}": sum(xs) / len(xs) for k, xs in sorted(ratios.items())})
    return out


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
