"""Stage `tokenizer`: byte-level BPE trained on the decontaminated corpus, then the corpus as token shards.

1. Plan: every document goes to `train` or `val` (by id hash) or is dropped because it is, or overlaps
   (shares a long word n-gram with), an evaluation document: align_data's held-out rows (the built-in
   eval packages' documents, the user datasets' eval rows) and the files of `decontam_files`. With no
   evaluation set at all the step is skipped, with a note in the log and the manifest.
2. Train byte-level BPE (HF `tokenizers`) on the train split only, so bytes/token on `val` is honest.
3. Save it as a `transformers` tokenizer folder (special tokens, chat template with `{% generation %}`
   markers for trl's assistant-only loss) and encode both splits into `tasks.common.tokens` shards,
   each document followed by EOS.

Memory stays bounded whatever the corpus size: every pass streams the document shards (the plan keeps
one byte per document), BPE training reads a generator, and token shards are appended batch by batch.
Every core works: the decontamination pass runs per corpus shard in a process pool (`workers`), and
`encode_batch` runs on the tokenizers library's Rayon threads (TOKENIZERS_PARALLELISM=true while the
stage runs) while a reader thread parses the next batch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from conf.tokenizer import SPECIAL_TOKENS, TokenizerConfig
from tasks.common.alignment import EVAL_DOCUMENTS
from tasks.common.artifacts import Manifest
from tasks.common.data import Document, read_documents, read_shard, shard_paths
from tasks.common.jsonl import JsonlWriter, iter_jsonl
from tasks.common.pool import OrderedPool
from tasks.common.splits import hash_fraction
from tasks.common.stage import StageReport
from tasks.common.tokens import INDEX_FILE, TokenShardWriter
from tasks.common.tracking import MetricLogger

log = logging.getLogger(__name__)
STAGE_VERSION = 1
T = TypeVar("T")

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
EVAL_FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".txt")


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

    def __bool__(self) -> bool:
        return bool(self.ids)

    def check(self, doc: Document) -> dict | None:
        """None to keep the document, else a record of why it is dropped."""
        if doc.id in self.ids:
            return {"id": doc.id, "reason": "listed"}
        if self.bank:
            for gram in word_ngrams(doc.text, self.ngram):
                if gram in self.bank:
                    return {"id": doc.id, "reason": "overlap", "eval_id": self.bank[gram], "ngram": gram}
        return None


def align_eval_documents(manifest: Manifest) -> list[dict]:
    """align_data's held-out rows as `{id, text}` (none in a folder without eval documents)."""
    if EVAL_DOCUMENTS not in manifest.files:
        return []
    path = manifest.file(EVAL_DOCUMENTS)
    docs = []
    for lineno, rec in iter_jsonl(path):
        if not (isinstance(rec, dict) and "id" in rec and isinstance(rec.get("text"), str)):
            raise ValueError(f"{path}:{lineno}: expected a JSON object with 'id' and 'text'")
        docs.append({"id": str(rec["id"]), "text": rec["text"]})
    return docs


def eval_file_documents(entries: list[str]) -> list[dict]:
    """The rows of the user's evaluation files (`decontam_files`: files or folders of them) as `{id,
    text}`: every string in a row (nested ones too, e.g. message contents) is eval text; a .txt file is
    one document. Ids are `file:row`, so no corpus document is dropped as "listed" by accident."""
    docs = []
    for entry in entries:
        path = Path(entry).expanduser()
        if not path.exists():
            raise ValueError(f"tokenizer.decontam_files: {entry} does not exist")
        files = (
            sorted(f for f in path.rglob("*") if f.suffix in EVAL_FILE_SUFFIXES) if path.is_dir() else [path]
        )
        for f in files:
            for i, row in enumerate(_eval_rows(f)):
                text = "\n".join(_strings(row))
                if text:
                    docs.append({"id": f"eval:{f}:{i + 1}", "text": text})
    return docs


def _eval_rows(path: Path) -> Iterator[Any]:
    if path.suffix == ".txt":
        yield path.read_text(encoding="utf-8")
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        yield from pq.read_table(path).to_pylist()
    elif path.suffix == ".json" and path.read_text(encoding="utf-8").lstrip().startswith("["):
        yield from json.loads(path.read_text(encoding="utf-8"))
    elif path.suffix in (".jsonl", ".json"):
        for _, row in iter_jsonl(path):
            yield row
    else:
        raise ValueError(f"tokenizer.decontam_files: {path}: expected {', '.join(EVAL_FILE_SUFFIXES)}")


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def evaluation_documents(cfg: TokenizerConfig, align: Manifest | None) -> tuple[list[dict], dict[str, int]]:
    """Every evaluation document the corpus is decontaminated against, and how many each source gave."""
    held_out = align_eval_documents(align) if align else []
    files = eval_file_documents(cfg.decontam_files)
    return held_out + files, {"align_data": len(held_out), "decontam_files": len(files)}


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
    eval_docs, eval_sources = evaluation_documents(cfg, inputs.get(ALIGN_INPUT))
    note = None
    if not eval_docs:
        note = (
            "decontamination skipped: no evaluation set (align_data held out no rows, "
            "tokenizer.decontam_files is empty)"
        )
        log.warning("tokenizer: %s", note)
    reports = out / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    plan, reasons = plan_splits(corpus, eval_docs, cfg, reports / "decontaminated.jsonl")
    with tokenizers_parallelism(cfg.parallel):
        tok = train_bpe(_train_texts(corpus, plan, cfg.train_max_chars), cfg, length=plan.count(TRAIN))
        wrap(tok, cfg.model_max_length).save_pretrained(str(out / TOKENIZER_DIR))
        ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
        encoded = encode_corpus(tok, corpus, plan, cfg, out, ids)
    write_reports(tok, corpus, plan, encoded.usage, reports, out, log_)
    report = stage_report(plan, reasons, encoded, ids, tok.get_vocab_size(), inputs.get(ALIGN_INPUT))
    report.counts.update({f"eval_docs_{k}": v for k, v in eval_sources.items()})
    if note:
        report.extra["decontamination"] = note
    return report


def plan_splits(
    corpus: Manifest, eval_docs: list[dict], cfg: TokenizerConfig, dropped_path: Path
) -> tuple[bytearray, dict[str, int]]:
    """A split (or DROP) per document, in corpus order, and the drops by reason (each listed in
    `dropped_path`); fails when either split would be empty. Shards are planned in a process pool (each
    worker holds the eval n-grams), results joined in shard order: the plan never depends on `workers`."""
    plan = bytearray()
    reasons: dict[str, int] = {}
    paths = [str(p) for p in shard_paths(corpus)]
    workers = min(cfg.workers or os.cpu_count() or 1, len(paths)) if eval_docs else 1
    setup = (eval_docs, cfg.decontam_ngram, cfg.val_fraction, cfg.split_seed)
    with (
        JsonlWriter(dropped_path) as dropped,
        OrderedPool(workers, initializer=_start_planner, initargs=setup) as pool,
    ):
        if pool.in_process:
            _start_planner(*setup)
        for shard_plan, drops in pool.map(_plan_shard, paths):
            plan += shard_plan
            for why in drops:
                reasons[why["reason"]] = reasons.get(why["reason"], 0) + 1
                dropped.write(why)
    n_docs = {s: plan.count(s) for s in (DROP, TRAIN, VAL)}
    if n_docs[VAL] == 0 or n_docs[TRAIN] == 0:
        raise ValueError(
            f"{len(plan)} documents gave {n_docs[TRAIN]} train and {n_docs[VAL]} validation documents "
            f"({n_docs[DROP]} dropped by decontamination): both splits need at least one; "
            f"adjust tokenizer.val_fraction={cfg.val_fraction} or feed more documents"
        )
    return plan, reasons


_PLANNER: dict[str, Any] = {}  # what `_plan_shard` needs, set once per worker by `_start_planner`


def _start_planner(eval_docs: list[dict], ngram: int, val_fraction: float, seed: int) -> None:
    _PLANNER.update(decon=Decontaminator(eval_docs, ngram), val_fraction=val_fraction, seed=seed)


def _plan_shard(path: str) -> tuple[bytearray, list[dict]]:
    """One corpus shard's plan bytes and the records of its dropped documents."""
    decon: Decontaminator = _PLANNER["decon"]
    plan, drops = bytearray(), []
    for doc in read_shard(Path(path)):
        why = decon.check(doc) if decon else None
        if why:
            drops.append(why)
            plan.append(DROP)
        else:
            plan.append(split_of(doc.id, _PLANNER["val_fraction"], _PLANNER["seed"]))
    return plan, drops


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
    for batch in prefetched(_batches(corpus, plan, cfg.batch_docs)):
        encodings = tok.encode_batch([d.text for _, d in batch])  # Rayon threads, the GIL released
        for split in (TRAIN, VAL):
            ids_: list[int] = []
            for (s, doc), enc in zip(batch, encodings, strict=True):
                if s != split:
                    continue
                ids_ += enc.ids
                ids_.append(ids[EOS])
                text_bytes[split] += len(doc.text.encode("utf-8"))
                text_tokens[split] += len(enc.ids)
            if ids_:
                arr = np.asarray(ids_, dtype=np.int64)
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


def prefetched(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """`items`, produced by a reader thread up to `depth` ahead: parsing the next batch's JSON overlaps
    the current `encode_batch`, which releases the GIL. An error in the reader is raised here."""
    q: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False  # the consumer is gone

    def read() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((False, None))
        except BaseException as e:  # handed to the consumer
            put((False, e))

    reader = threading.Thread(target=read, name="tokenizer-reader", daemon=True)
    reader.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        reader.join()


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
