"""Stage `tokenizer`: byte-level BPE trained on the decontaminated corpus, then the corpus as token shards.

1. Plan: every document goes to `train` or `val` (by id hash) or is dropped because it is, or overlaps
   (shares a long word n-gram with), a document align_data holds out for evaluation.
2. Train byte-level BPE (HF `tokenizers`) on the train split only, so bytes/token on `val` is honest.
3. Save it as a `transformers` tokenizer folder (special tokens, chat template with `{% generation %}`
   markers for trl's assistant-only loss) and encode both splits into `tasks.common.tokens` shards,
   each document followed by EOS.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from conf.tokenizer import SPECIAL_TOKENS, TokenizerConfig
from tasks.common.alignment import EVAL_DOCUMENTS
from tasks.common.artifacts import Manifest
from tasks.common.data import Document, read_documents
from tasks.common.jsonl import JsonlWriter, iter_jsonl
from tasks.common.splits import hash_fraction
from tasks.common.stage import StageReport
from tasks.common.tokens import INDEX_FILE, TokenShardWriter
from tasks.common.tracking import MetricLogger

log = logging.getLogger(__name__)
STAGE_VERSION = 1

TOKENIZER_DIR = "tokenizer"
ALIGN_INPUT = "align_data"
BOS, EOS, PAD = SPECIAL_TOKENS[:3]
DROP, TRAIN, VAL = 0, 1, 2
SPLIT_NAMES = {TRAIN: "train", VAL: "val"}

# Each message renders as `<|role|>\n{content}<|end|>\n`; an assistant answer instead ends with EOS (so
# generation stops there) and sits inside `{% generation %}`, which is what `return_assistant_tokens_mask`
# (trl's assistant_only_loss) marks as trainable.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|assistant|>\\n' }}{% generation %}{{ message['content'] }}{{ '<|eos|>' }}{% endgeneration %}"
    "{{ '\\n' }}"
    "{%- elif message['role'] in ['system', 'user'] -%}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{%- else -%}"
    "{{ raise_exception('unknown chat role ' + message['role'] + ': expected system, user or assistant') }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}"
)

_WORDS = re.compile(r"\w+")


# ---------------------------------------------------------------- splits and decontamination


def split_of(doc_id: str, val_fraction: float, seed: int = 0) -> int:
    """TRAIN or VAL by a hash of the document id: stable across runs, machines and corpus order."""
    return VAL if hash_fraction(doc_id, seed) < val_fraction else TRAIN


def word_ngrams(text: str, n: int) -> list[str]:
    """Lowercased word n-grams in text order (a list, not a set: set order changes with the process's
    string hash seed, and the decontamination report names the first overlapping n-gram)."""
    words = _WORDS.findall(text.lower())
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]


class Decontaminator:
    """Knows the eval documents; says why a corpus document must go (listed, or overlapping one)."""

    def __init__(self, eval_docs: list[dict], ngram: int):
        self.ids = {str(d["id"]) for d in eval_docs}
        self.ngram = ngram
        self.bank: dict[str, str] = {}  # n-gram -> the first eval document holding it
        if ngram > 0:
            for d in eval_docs:
                for gram in word_ngrams(d["text"], ngram):
                    self.bank.setdefault(gram, str(d["id"]))

    @classmethod
    def from_manifest(cls, manifest: Manifest, ngram: int) -> Decontaminator:
        path = manifest.file(EVAL_DOCUMENTS)
        docs = []
        for lineno, rec in iter_jsonl(path):
            if not (isinstance(rec, dict) and "id" in rec and isinstance(rec.get("text"), str)):
                raise ValueError(f"{path}:{lineno}: expected a JSON object with 'id' and 'text'")
            docs.append({"id": rec["id"], "text": rec["text"]})
        return cls(docs, ngram)

    def check(self, doc: Document) -> dict | None:
        """None to keep the document, else a record of why it is dropped."""
        if doc.id in self.ids:
            return {"id": doc.id, "reason": "listed"}
        if self.bank:
            for gram in word_ngrams(doc.text, self.ngram):
                if gram in self.bank:
                    return {"id": doc.id, "reason": "overlap", "eval_id": self.bank[gram], "ngram": gram}
        return None


# ---------------------------------------------------------------- the tokenizer


def new_tokenizer() -> Tokenizer:
    """Byte-level BPE without normalization, so decode(encode(text)) == text for any Unicode."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_bpe(texts: Iterator[str], cfg: TokenizerConfig, length: int | None = None) -> Tokenizer:
    tok = new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=list(SPECIAL_TOKENS),  # ids 0..6 in this order: bos=0, eos=1, pad=2
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        max_token_length=cfg.max_token_length,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer, length=length)
    return tok


def wrap(tok: Tokenizer, model_max_length: int):
    """The `transformers` face of the tokenizer: what `AutoTokenizer.from_pretrained` gives back."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=list(SPECIAL_TOKENS[3:]),
        model_max_length=model_max_length,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


@contextlib.contextmanager
def tokenizers_parallelism(enabled: bool) -> Iterator[None]:
    """Set TOKENIZERS_PARALLELISM while the stage runs (the Rust side reads it on every call), then
    restore it, so the setting never leaks into other stages of the same process."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if enabled else "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, which ByteLevel token strings are written in."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def token_bytes(tok: Tokenizer) -> dict[int, bytes]:
    """The raw bytes each non-special token stands for."""
    to_byte = {c: b for b, c in bytes_to_unicode().items()}
    special = set(SPECIAL_TOKENS)
    return {i: bytes(to_byte[c] for c in s) for s, i in tok.get_vocab().items() if s not in special}


# ---------------------------------------------------------------- the stage


def document_input(inputs: dict[str, Manifest]) -> Manifest:
    """The first input other than align_data: the corpus (scrub, or dedup before scrub existed)."""
    docs = [m for name, m in inputs.items() if name != ALIGN_INPUT]
    if not docs:
        raise ValueError(f"tokenizer needs a document stage as input; got only {sorted(inputs) or 'none'}")
    return docs[0]


def train_tokenizer(
    cfg: TokenizerConfig, inputs: dict[str, Manifest], out: Path, log_: MetricLogger
) -> StageReport:
    """Plan the splits (decontaminating), train on train, save, encode both splits, then report."""
    corpus = document_input(inputs)
    align = inputs.get(ALIGN_INPUT)
    decon = Decontaminator.from_manifest(align, cfg.decontam_ngram) if align else None
    reports = out / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    plan, reasons = plan_splits(corpus, decon, cfg, reports / "decontaminated.jsonl")
    with tokenizers_parallelism(cfg.parallel):
        tok = train_bpe(_train_texts(corpus, plan, cfg.train_max_chars), cfg, length=plan.count(TRAIN))
        wrap(tok, cfg.model_max_length).save_pretrained(str(out / TOKENIZER_DIR))
        ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
        encoded = encode_corpus(tok, corpus, plan, cfg, out, ids)
    write_reports(tok, corpus, plan, encoded.usage, reports, out, log_)
    return stage_report(plan, reasons, encoded, ids, tok.get_vocab_size(), align)


def plan_splits(
    corpus: Manifest, decon: Decontaminator | None, cfg: TokenizerConfig, dropped_path: Path
) -> tuple[bytearray, dict[str, int]]:
    """A split (or DROP) per document, in corpus order, and the drops by reason (each listed in
    `dropped_path`); fails when either split would be empty."""
    plan = bytearray()
    reasons: dict[str, int] = {}
    with JsonlWriter(dropped_path) as dropped:
        for doc in read_documents(corpus):
            why = decon.check(doc) if decon else None
            if why:
                reasons[why["reason"]] = reasons.get(why["reason"], 0) + 1
                dropped.write(why)
                plan.append(DROP)
            else:
                plan.append(split_of(doc.id, cfg.val_fraction, cfg.split_seed))
    n_docs = {s: plan.count(s) for s in (DROP, TRAIN, VAL)}
    if n_docs[VAL] == 0 or n_docs[TRAIN] == 0:
        raise ValueError(
            f"{len(plan)} documents gave {n_docs[TRAIN]} train and {n_docs[VAL]} validation documents "
            f"({n_docs[DROP]} dropped by decontamination): both splits need at least one; "
            f"adjust tokenizer.val_fraction={cfg.val_fraction} or feed more documents"
        )
    return plan, reasons


@dataclass
class Encoded:
    """What encoding the corpus gave: the token shard index, text bytes and tokens per split, token usage."""

    index: dict
    text_bytes: dict[int, int]
    text_tokens: dict[int, int]
    usage: np.ndarray


def encode_corpus(
    tok: Tokenizer, corpus: Manifest, plan: bytearray, cfg: TokenizerConfig, out: Path, ids: dict[str, int]
) -> Encoded:
    """Both splits as token shards, each document followed by EOS; text that spells a control token
    ("<|eos|>") stays plain text."""
    vocab_size = tok.get_vocab_size()
    tok.encode_special_tokens = True
    writer = TokenShardWriter(
        out,
        vocab_size,
        eos_id=ids[EOS],
        bos_id=ids[BOS],
        pad_id=ids[PAD],
        shard_tokens=cfg.shard_tokens,
        splits={"train": [], "val": []},
    )
    text_bytes = {TRAIN: 0, VAL: 0}
    text_tokens = {TRAIN: 0, VAL: 0}
    usage = np.zeros(vocab_size, dtype=np.int64)
    for batch in _batches(corpus, plan, cfg.batch_docs):
        encodings = tok.encode_batch([d.text for _, d in batch])
        for split in (TRAIN, VAL):
            arrays = []
            for (s, doc), enc in zip(batch, encodings, strict=True):
                if s != split:
                    continue
                arrays.append(np.asarray(enc.ids + [ids[EOS]], dtype=np.int64))
                text_bytes[split] += len(doc.text.encode("utf-8"))
                text_tokens[split] += len(enc.ids)
            if arrays:
                arr = np.concatenate(arrays)
                usage += np.bincount(arr, minlength=vocab_size)
                writer.write(SPLIT_NAMES[split], arr)
    return Encoded(writer.close(), text_bytes, text_tokens, usage)


def write_reports(
    tok: Tokenizer,
    corpus: Manifest,
    plan: bytearray,
    usage: np.ndarray,
    reports: Path,
    out: Path,
    log_: MetricLogger,
) -> None:
    """The longest tokens and a segmented validation document, to eyeball the merges; all logged."""
    longest = _longest_tokens(tok, usage, 50)
    (reports / "longest_tokens.json").write_text(
        json.dumps(longest, indent=1, ensure_ascii=False), encoding="utf-8"
    )
    sample = _segmentation_sample(tok, corpus, plan)
    (reports / "sample_segmentation.txt").write_text(sample, encoding="utf-8")
    log_.log_dict(longest, "reports/longest_tokens.json")
    log_.log_text(sample, "reports/sample_segmentation.txt")
    log_.log_artifact(out / TOKENIZER_DIR, TOKENIZER_DIR)
    log_.log_artifact(reports / "decontaminated.jsonl", "reports")


def stage_report(
    plan: bytearray,
    reasons: dict[str, int],
    encoded: Encoded,
    ids: dict[str, int],
    vocab_size: int,
    align: Manifest | None,
) -> StageReport:
    n_docs = {s: plan.count(s) for s in (DROP, TRAIN, VAL)}
    splits = encoded.index["splits"]
    bpt = {s: encoded.text_bytes[s] / max(encoded.text_tokens[s], 1) for s in (TRAIN, VAL)}
    counts = {
        "documents_in": len(plan),
        "documents": n_docs[TRAIN] + n_docs[VAL],
        "decontaminated_docs": n_docs[DROP],
        "decontaminated_listed": reasons.get("listed", 0),
        "decontaminated_overlap": reasons.get("overlap", 0),
        "train_docs": n_docs[TRAIN],
        "val_docs": n_docs[VAL],
        "train_tokens": sum(s["tokens"] for s in splits["train"]),
        "val_tokens": sum(s["tokens"] for s in splits["val"]),
        "vocab_size": vocab_size,
    }
    metrics = {
        "bytes_per_token_val": bpt[VAL],
        "bytes_per_token_train": bpt[TRAIN],
        "vocab_used_share": float((encoded.usage > 0).sum() / vocab_size),
    }
    log.info(
        "tokenizer: vocab %d, %d train / %d val tokens, %.3f bytes/token on val, %d docs decontaminated",
        vocab_size,
        counts["train_tokens"],
        counts["val_tokens"],
        bpt[VAL],
        n_docs[DROP],
    )
    return StageReport(
        counts=counts,
        metrics=metrics,
        extra={
            "tokenizer_dir": TOKENIZER_DIR,
            "tokens_index": INDEX_FILE,
            "special_token_ids": ids,
            "decontaminated_against": align.content_hash if align else None,
        },
    )


def _train_texts(corpus: Manifest, plan: bytearray, max_chars: int | None) -> Iterator[str]:
    chars = 0
    for doc, split in zip(read_documents(corpus), plan, strict=True):
        if split != TRAIN:
            continue
        if max_chars is not None and chars >= max_chars:
            return
        chars += len(doc.text)
        yield doc.text


def _batches(corpus: Manifest, plan: bytearray, size: int) -> Iterator[list[tuple[int, Document]]]:
    batch: list[tuple[int, Document]] = []
    for doc, split in zip(read_documents(corpus), plan, strict=True):
        if split == DROP:
            continue
        batch.append((split, doc))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _longest_tokens(tok: Tokenizer, usage: np.ndarray, k: int) -> list[dict]:
    """The k longest tokens by byte length (longest first, then by id), with how often the corpus uses
    them."""
    raw = token_bytes(tok)
    top = sorted(raw, key=lambda i: (-len(raw[i]), i))[:k]
    return [
        {
            "id": i,
            "text": raw[i].decode("utf-8", errors="replace"),
            "bytes": len(raw[i]),
            "count": int(usage[i]),
        }
        for i in top
    ]


def _segmentation_sample(tok: Tokenizer, corpus: Manifest, plan: bytearray, max_chars: int = 600) -> str:
    """The first validation document cut at token boundaries, to eyeball what the merges learned."""
    for doc, split in zip(read_documents(corpus), plan, strict=True):
        if split == VAL:
            text = doc.text[:max_chars]
            enc = tok.encode(text)
            pieces = [text[a:b] for a, b in enc.offsets]
            return f"{doc.id}: {len(text)} chars, {len(enc.ids)} tokens\n\n" + "|".join(pieces) + "\n"
    return ""
