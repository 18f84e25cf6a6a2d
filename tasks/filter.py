"""Stage `filter`: heuristic quality filters (Gopher / C4 style) over the collected documents.

The filters are small objects in a list, datatrove-style: each has a `name` and a `reason(doc)` that
returns the name when the document should be dropped, else None. The first filter that objects drops
the document, so each dropped document is counted once, under `dropped_<name>`. To add a filter,
write a class with `name` and `reason` (or subclass `DocFilter` and implement `drops(text)`) and
append it in `build_filters`.

Words are whitespace-separated tokens, as in Gopher. Lines that are doctest prompts (`>>>`, `...`)
are code, not prose: they are left out of the symbol and ellipsis counts.

Speed (the stage reads the whole corpus): what several filters need is computed once per text and
cached (`words`, `char_stats`, `word_grams`), in C or numpy rather than a Python loop per character or
word: character classes come from one lookup table over the text's code points, and word n-grams are
integer ids built level by level (the n-gram at i is the (n-1)-gram at i plus word i+n-1), sorted once
per n. Every shortcut gives exactly the decisions of the plain definitions in the docstrings
(tests/test_filter_speed.py checks them against a straightforward reference on a generated corpus).
"""

from __future__ import annotations

import itertools
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import numpy as np

from conf.filter import FilterConfig
from tasks.common.artifacts import Manifest
from tasks.common.data import Document
from tasks.common.jsonl import write_jsonl
from tasks.common.pii import mask_id, mask_sample
from tasks.common.progress import Progress, file_bytes, map_with_progress
from tasks.common.shards import PoolShardMap, ShardJob, ShardMap, first_per_key, shard_jobs
from tasks.common.stage import StageReport
from tasks.common.tracking import MetricLogger

log = logging.getLogger(__name__)
STAGE_VERSION = 2  # 2: output shard i is what input shard i became
SAMPLES_FILE = "dropped_samples.jsonl"
SAMPLE_CHARS = 1500
PRELOAD = ("tasks.filter",)  # what a filter worker imports once in the forkserver

BULLETS = ("-", "*", "•", "●", "○", "■", "□", "▪", "▫", "◦", "‣", "⁃", "–", "—")
ELLIPSES = ("...", "…")

# code point classes (`str.isspace`, `isdigit`, `isalpha`), one byte per code point
_SPACE, _DIGIT, _ALPHA, _FOLDS_TO_ASCII = 1, 2, 4, 8
# the only non-ASCII characters that `re.IGNORECASE` matches against an ASCII character (İ ı ſ K);
# tests/test_filter_speed.py checks the list against every code point
FOLDS_TO_ASCII = "\u0130\u0131\u017f\u212a"
TABLE_SIZE = 0x30000


@lru_cache(maxsize=4)
def words(text: str) -> tuple[str, ...]:
    """Whitespace-separated words (cached: most filters need them, and str hashes are cached too)."""
    return tuple(text.split())


@lru_cache(maxsize=4)
def prose_lines(text: str) -> tuple[str, ...]:
    """Non-empty stripped lines, without doctest prompt lines."""
    return tuple(s for line in text.splitlines() if (s := line.strip()) and not s.startswith((">>>", "...")))


@lru_cache(maxsize=1)
def char_classes() -> np.ndarray:
    """The class bits of the code points below 0x30000 (BMP and the next two planes: every script and
    emoji; built once per process, ~0.1 s); `char_stats` goes the slow way for a text beyond them."""
    everything = "".join(map(chr, range(TABLE_SIZE)))
    table = np.zeros(TABLE_SIZE, dtype=np.uint8)
    for bit, test in ((_SPACE, str.isspace), (_DIGIT, str.isdigit), (_ALPHA, str.isalpha)):
        table |= np.fromiter(map(test, everything), dtype=bool, count=len(everything)).view(np.uint8) * bit
    table[[ord(c) for c in FOLDS_TO_ASCII]] |= _FOLDS_TO_ASCII
    return table


@dataclass(frozen=True)
class CharStats:
    """Character counts of one text, as `str.isspace` / `isdigit` / `isalpha` define the classes."""

    non_space: int
    digits: int  # non-space characters that are digits
    alpha_words: int  # whitespace-separated words holding at least one letter
    folds_to_ascii: bool  # holds a character in FOLDS_TO_ASCII


@lru_cache(maxsize=4)
def char_stats(text: str) -> CharStats:
    """One table lookup per code point, then counts in numpy (lone surrogates from JSON are kept)."""
    points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    if len(points) and int(points.max()) >= TABLE_SIZE:
        return char_stats_slowly(text)
    classes = char_classes()[points]
    space = (classes & _SPACE).astype(bool)
    digits = int(np.count_nonzero((classes & _DIGIT).astype(bool) & ~space))
    # word number of every character: words start at a non-space character after a space (or at 0)
    starts = ~space
    starts[1:] &= space[:-1]
    word_of = np.cumsum(starts)[(classes & _ALPHA).astype(bool)]  # letters are never spaces
    alpha_words = int(np.count_nonzero(np.diff(word_of))) + 1 if len(word_of) else 0
    folds = bool(np.any(classes & _FOLDS_TO_ASCII))
    return CharStats(int(np.count_nonzero(~space)), digits, alpha_words, folds)


def char_stats_slowly(text: str) -> CharStats:
    """`char_stats` by the definitions, one character at a time (texts with code points past the table)."""
    ws = text.split()
    return CharStats(
        non_space=sum(map(len, ws)),
        digits=sum(map(str.isdigit, text)),
        alpha_words=sum(1 for w in ws if any(map(str.isalpha, w))),
        folds_to_ascii=any(c in text for c in FOLDS_TO_ASCII),
    )


class WordGrams:
    """Word n-grams of one text as integer ids, for the repetition filters.

    Level 1 numbers the distinct words; the n-gram at i is the pair ((n-1)-gram id at i, word id at
    i+n-1), packed into one int64 and renumbered by a stable sort, so equal n-grams get equal ids
    exactly (no hashing, no collisions). A level without a repeated n-gram ends the build: no longer
    n-gram can repeat then either.
    """

    def __init__(self, ws: tuple[str, ...]):
        self.size = len(ws)
        index = dict(zip(dict.fromkeys(ws), itertools.count()))
        self.word_ids = np.fromiter(map(index.__getitem__, ws), dtype=np.int64, count=len(ws))
        self.lens = np.fromiter(map(len, ws), dtype=np.int64, count=len(ws))
        self.vocab = len(index)
        # per level n >= 2 with a repeat: (ids, positions of the n-grams that repeat an earlier one)
        self._levels: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._ids = self.word_ids  # ids of the highest level built so far
        self._built = 1
        self.unique_from: int | None = None if self.vocab < self.size else 1  # no repeats from this n

    def level(self, n: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(ids, repeats) of the n-grams; None when none repeats (or there are fewer than n words)."""
        if n > self.size or (self.unique_from is not None and n >= self.unique_from):
            return None
        if n == 1 and 1 not in self._levels:
            self._levels[1] = self._sorted(self.word_ids)
        while self._built < n:
            m = self._built + 1
            packed = self._ids[: self.size - m + 1] * self.vocab
            packed += self.word_ids[m - 1 :]
            level = self._sorted(packed)
            if not len(level[1]):
                self.unique_from = m
                return None
            self._levels[m] = level
            self._ids, self._built = level[0], m
        return self._levels[n]

    @staticmethod
    def _sorted(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Dense ids of `packed` values, and the positions repeating an earlier value."""
        order = packed.argsort(kind="stable")
        ordered = packed[order]
        repeat = ordered[1:] == ordered[:-1]  # in sorted order: same n-gram as the one before
        ids = np.empty(len(packed), dtype=np.int64)
        ids[order[0]] = 0
        ids[order[1:]] = np.cumsum(~repeat)
        # a stable sort puts an n-gram's later occurrences after its first
        return ids, order[1:][repeat]

    def top_gram(self, n: int) -> tuple[int, int]:
        """(count, characters) of the most frequent n-gram, the first to appear among equally frequent
        ones (as `Counter.most_common`); count 1 when none repeats."""
        lv = self.level(n)
        if lv is None:
            return 1, 0
        ids = lv[0]
        counts = np.bincount(ids)
        top = int(counts.max())
        # the first position holding a most frequent n-gram is that n-gram's first occurrence
        at = int(np.argmax(counts[ids] == top))
        return top, int(self.lens[at : at + n].sum())

    def duplicated_chars(self, n: int) -> int:
        """Characters of words inside n-grams that repeat an earlier n-gram (overlaps counted once)."""
        lv = self.level(n)
        if lv is None:
            return 0
        starts = lv[1]
        edges = np.zeros(self.size + 1, dtype=np.int64)
        edges[starts] = 1
        edges[starts + n] -= 1
        return int(self.lens[np.cumsum(edges[:-1]) > 0].sum())


@lru_cache(maxsize=4)
def word_grams(text: str) -> WordGrams:
    return WordGrams(words(text))


def duplicated_ngram_chars(ws: tuple[str, ...], n: int) -> int:
    """Characters of words inside n-grams that repeat an earlier n-gram (overlaps counted once, as Gopher)."""
    return WordGrams(ws).duplicated_chars(n)


class DocFilter:
    """A quality filter: `reason(doc)` returns `name` to drop the document, or None to keep it."""

    name = "filter"

    def reason(self, doc: Document) -> str | None:
        return self.name if self.drops(doc.text) else None

    def drops(self, text: str) -> bool:
        raise NotImplementedError


@dataclass
class MinWords(DocFilter):
    min_words: int
    name = "too_few_words"

    def drops(self, text: str) -> bool:
        return len(words(text)) < self.min_words


@dataclass
class MaxWords(DocFilter):
    max_words: int
    name = "too_many_words"

    def drops(self, text: str) -> bool:
        return len(words(text)) > self.max_words


@dataclass
class MeanWordLength(DocFilter):
    lo: float | None
    hi: float | None
    name = "mean_word_length"

    def drops(self, text: str) -> bool:
        ws = words(text)
        if not ws:
            return True
        mean = char_stats(text).non_space / len(ws)  # the characters of the words: sum(map(len, ws))
        return (self.lo is not None and mean < self.lo) or (self.hi is not None and mean > self.hi)


@dataclass
class SymbolWordRatio(DocFilter):
    """Gopher: too many `#` and ellipses per word marks lists of hashtags or truncated snippets."""

    max_ratio: float
    name = "symbol_ratio"

    def drops(self, text: str) -> bool:
        ws = words(text)
        prose = "\n".join(prose_lines(text))
        symbols = prose.count("#") + sum(prose.count(e) for e in ELLIPSES)
        return bool(ws) and symbols / len(ws) > self.max_ratio


@dataclass
class DigitRatio(DocFilter):
    """Tables of numbers, hex dumps and phone lists are not language: digits per non-space character."""

    max_ratio: float
    name = "digit_ratio"

    def drops(self, text: str) -> bool:
        stats = char_stats(text)
        return bool(stats.non_space) and stats.digits / stats.non_space > self.max_ratio


@dataclass
class AlphaWords(DocFilter):
    """Gopher: most words should contain a letter."""

    min_ratio: float
    name = "alpha_words"

    def drops(self, text: str) -> bool:
        ws = words(text)
        return not ws or char_stats(text).alpha_words / len(ws) < self.min_ratio


@dataclass
class BulletLines(DocFilter):
    max_ratio: float
    name = "bullet_lines"

    def drops(self, text: str) -> bool:
        lines = prose_lines(text)
        return bool(lines) and sum(1 for s in lines if s.startswith(BULLETS)) / len(lines) > self.max_ratio


@dataclass
class EllipsisLines(DocFilter):
    max_ratio: float
    name = "ellipsis_lines"

    def drops(self, text: str) -> bool:
        lines = prose_lines(text)
        return bool(lines) and sum(1 for s in lines if s.endswith(ELLIPSES)) / len(lines) > self.max_ratio


@dataclass
class RepeatedLines(DocFilter):
    """Gopher: boilerplate and spam repeat whole lines (each line after its first occurrence counts)."""

    max_line_share: float | None
    max_char_share: float | None
    name = "repeated_lines"

    def drops(self, text: str) -> bool:
        lines = [s for line in text.splitlines() if (s := line.strip())]
        if not lines:
            return False
        distinct = set(lines)
        dup_lines = len(lines) - len(distinct)
        total_chars = sum(map(len, lines))
        dup_chars = total_chars - sum(map(len, distinct))
        return (self.max_line_share is not None and dup_lines / len(lines) > self.max_line_share) or (
            self.max_char_share is not None and dup_chars / total_chars > self.max_char_share
        )


@dataclass
class TopNgram(DocFilter):
    """Gopher: the most frequent n-gram (seen more than once) covers too many of the word characters."""

    max_shares: dict[int, float]
    min_words: int = 0
    name = "top_ngram"

    def drops(self, text: str) -> bool:
        ws = words(text)
        if len(ws) < self.min_words:
            return False
        total = char_stats(text).non_space  # sum(map(len, ws))
        grams = word_grams(text)
        for n, limit in self.max_shares.items():
            if len(ws) < n:
                continue
            count, chars = grams.top_gram(n)
            if count > 1 and count * chars / total > limit:
                return True
        return False


@dataclass
class DuplicateNgrams(DocFilter):
    """Gopher: the share of word characters inside duplicated n-grams, for each n."""

    max_shares: dict[int, float]
    min_words: int = 0
    name = "duplicate_ngrams"

    def drops(self, text: str) -> bool:
        ws = words(text)
        if len(ws) < self.min_words:
            return False
        total = char_stats(text).non_space  # sum(map(len, ws))
        grams = word_grams(text)
        return any(
            len(ws) >= n and grams.duplicated_chars(n) / total > lim for n, lim in self.max_shares.items()
        )


class Blocklist(DocFilter):
    """C4-style: blocklisted terms as whole words, case-insensitive.

    The regex decides; most texts never reach it: when every term is ASCII and the text holds none of
    the few characters that case-fold onto ASCII, a match needs a term's lowercase inside the text's
    lowercase, which a few substring searches rule out much faster than the regex scans.
    """

    name = "blocklist"

    def __init__(self, terms: list[str], min_hits: int = 1):
        terms = sorted({t.strip() for t in terms if t.strip()}, key=len, reverse=True)  # longest first
        alternation = "|".join(re.escape(t) for t in terms)
        self.pattern = re.compile(rf"(?<!\w)(?:{alternation})(?!\w)", re.IGNORECASE) if terms else None
        self.min_hits = min_hits
        self.ascii_terms = [t.lower() for t in terms] if all(t.isascii() for t in terms) else None

    def drops(self, text: str) -> bool:
        if self.pattern is None:
            return False
        if self.ascii_terms is not None and not char_stats(text).folds_to_ascii:
            lowered = text.lower()
            if not any(map(lowered.__contains__, self.ascii_terms)):
                return False
        hits = 0
        for _ in self.pattern.finditer(text):
            hits += 1
            if hits >= self.min_hits:
                return True
        return False


def build_filters(cfg: FilterConfig) -> list[DocFilter]:
    """The enabled filters, cheapest first (the first objection decides the drop reason)."""
    filters: list[DocFilter] = []
    if cfg.min_words is not None:
        filters.append(MinWords(cfg.min_words))
    if cfg.max_words is not None:
        filters.append(MaxWords(cfg.max_words))
    if cfg.min_mean_word_length is not None or cfg.max_mean_word_length is not None:
        filters.append(MeanWordLength(cfg.min_mean_word_length, cfg.max_mean_word_length))
    if cfg.max_symbol_word_ratio is not None:
        filters.append(SymbolWordRatio(cfg.max_symbol_word_ratio))
    if cfg.max_digit_ratio is not None:
        filters.append(DigitRatio(cfg.max_digit_ratio))
    if cfg.min_alpha_word_ratio is not None:
        filters.append(AlphaWords(cfg.min_alpha_word_ratio))
    if cfg.max_bullet_lines is not None:
        filters.append(BulletLines(cfg.max_bullet_lines))
    if cfg.max_ellipsis_lines is not None:
        filters.append(EllipsisLines(cfg.max_ellipsis_lines))
    if cfg.max_repeated_lines is not None or cfg.max_repeated_line_chars is not None:
        filters.append(RepeatedLines(cfg.max_repeated_lines, cfg.max_repeated_line_chars))
    if cfg.top_ngram_max_chars:
        filters.append(TopNgram(dict(cfg.top_ngram_max_chars), cfg.ngram_min_words))
    if cfg.dup_ngram_max_chars:
        filters.append(DuplicateNgrams(dict(cfg.dup_ngram_max_chars), cfg.ngram_min_words))
    if cfg.blocklist:
        filters.append(Blocklist(cfg.blocklist, cfg.blocklist_min_hits))
    return filters


def first_reason(filters: list[DocFilter], doc: Document) -> str | None:
    for f in filters:
        reason = f.reason(doc)
        if reason:
            return reason
    return None


@dataclass
class FilterPart:
    """What filtering one shard found (picklable: it comes back from a cluster worker)."""

    total: int
    chars_in: int
    kept: int
    kept_chars: int
    dropped: Counter[str]
    samples: list[dict]


def filter_shard(cfg: FilterConfig, out: Path, job: ShardJob) -> FilterPart:
    """Filter one input shard into output shard `job.index`; the map step of the stage."""
    filters = build_filters(cfg)
    dropped: Counter[str] = Counter({f.name: 0 for f in filters})
    samples: list[dict] = []
    total = chars_in = 0
    with job.writer(out) as writer:
        for doc in job.documents():
            total += 1
            chars_in += len(doc.text)
            reason = first_reason(filters, doc)
            if reason is None:
                writer.write(doc)
                continue
            dropped[reason] += 1
            if dropped[reason] <= cfg.samples_per_reason:
                text = mask_sample(doc.text, SAMPLE_CHARS)  # samples are logged: no raw PII, ids too
                samples.append({"reason": reason, "id": mask_id(doc.id), "source": doc.source,
                                "words": len(words(doc.text)), "text": text})  # fmt: skip
    return FilterPart(total, chars_in, writer.count, writer.chars, dropped, samples)


def filter_documents(
    cfg: FilterConfig,
    inputs: dict[str, Manifest],
    out: Path,
    log_: MetricLogger,
    map_shards: ShardMap | None = None,
) -> StageReport:
    """Map `filter_shard` over the input shards, then add up the counts and keep the first samples per
    reason: the same result as one pass over the whole input, whichever map ran the shards (here: the
    local pool of `filter.workers` processes, one shard per task)."""
    source = next(iter(inputs.values()))
    jobs = shard_jobs(source)
    pool = PoolShardMap(cfg.workers or os.cpu_count() or 1, preload=PRELOAD)
    sizes = file_bytes([j.path for j in jobs])
    with pool, Progress("filter", total=sum(sizes), log=log_) as bar:
        runner = map_shards or pool
        fn = partial(filter_shard, cfg, out)
        parts = map_with_progress(runner, fn, jobs, bar, sizes, docs_of=lambda p: p.total)
    total = sum(p.total for p in parts)
    if total == 0:
        raise ValueError(f"filter: the input stage {source.stage} ({source.path}) has no documents")
    kept, kept_chars, chars_in = (
        sum(getattr(p, f) for p in parts) for f in ("kept", "kept_chars", "chars_in")
    )
    dropped = dropped_by_reason(parts)
    samples = first_per_key((s for p in parts for s in p.samples), "reason", cfg.samples_per_reason)
    write_jsonl(out / SAMPLES_FILE, samples)
    counts = {"documents_in": total, "documents": kept, "chars": kept_chars, "dropped": total - kept}
    counts.update({f"dropped_{reason}": n for reason, n in sorted(dropped.items())})
    metrics = {
        "dropped_share": (total - kept) / total,
        "kept_chars_share": kept_chars / chars_in if chars_in else 0.0,
    }
    log_.log_artifact(out / SAMPLES_FILE, "filter")
    log.info("filter: %d in, %d kept, drops %s", total, kept, {k: v for k, v in dropped.items() if v})
    return StageReport(counts=counts, metrics=metrics, extra={"filters": list(dropped)})


def dropped_by_reason(parts: list[FilterPart]) -> Counter[str]:
    """Drops per filter over all shards, every filter listed (zeros included), in filter order."""
    dropped: Counter[str] = Counter(dict.fromkeys(parts[0].dropped, 0))  # every part counts every filter
    for p in parts:
        dropped.update(p.dropped)  # update, not +: a Counter sum drops the zero counts
    return dropped


def gate(cfg: FilterConfig, manifest: Manifest) -> str | None:
    share = manifest.metrics.get("dropped_share", 0.0)
    if share > cfg.max_dropped_share:
        return (
            f"filter dropped {share:.1%} of documents, "
            f"more than filter.max_dropped_share={cfg.max_dropped_share}; "
            f"see {SAMPLES_FILE} in {manifest.path} for examples per reason"
        )
    return None
