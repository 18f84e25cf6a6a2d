"""Stage `filter`: heuristic quality filters (Gopher / C4 style) over the collected documents.

The filters are small objects in a list, datatrove-style: each has a `name` and a `reason(doc)` that
returns the name when the document should be dropped, else None. The first filter that objects drops
the document, so each dropped document is counted once, under `dropped_<name>`. To add a filter,
write a class with `name` and `reason` (or subclass `DocFilter` and implement `drops(text)`) and
append it in `build_filters`.

Words are whitespace-separated tokens, as in Gopher. Lines that are doctest prompts (`>>>`, `...`)
are code, not prose: they are left out of the symbol and ellipsis counts.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

from conf.filter import FilterConfig
from tasks.common.artifacts import Manifest
from tasks.common.data import Document
from tasks.common.jsonl import write_jsonl
from tasks.common.shards import ShardJob, ShardMap, first_per_key, map_here, shard_jobs
from tasks.common.stage import StageReport
from tasks.common.tracking import MetricLogger

log = logging.getLogger(__name__)
STAGE_VERSION = 2  # 2: output shard i is what input shard i became
SAMPLES_FILE = "dropped_samples.jsonl"
SAMPLE_CHARS = 1500

BULLETS = ("-", "*", "•", "●", "○", "■", "□", "▪", "▫", "◦", "‣", "⁃", "–", "—")
ELLIPSES = ("...", "…")


@lru_cache(maxsize=4)
def words(text: str) -> tuple[str, ...]:
    """Whitespace-separated words (cached: most filters need them, and str hashes are cached too)."""
    return tuple(text.split())


@lru_cache(maxsize=4)
def prose_lines(text: str) -> tuple[str, ...]:
    """Non-empty stripped lines, without doctest prompt lines."""
    return tuple(s for line in text.splitlines() if (s := line.strip()) and not s.startswith((">>>", "...")))


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
        mean = sum(map(len, ws)) / len(ws)
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
    """Tables of numbers, hex dumps and phone lists are not language."""

    max_ratio: float
    name = "digit_ratio"

    def drops(self, text: str) -> bool:
        chars = [c for c in text if not c.isspace()]
        return bool(chars) and sum(c.isdigit() for c in chars) / len(chars) > self.max_ratio


@dataclass
class AlphaWords(DocFilter):
    """Gopher: most words should contain a letter."""

    min_ratio: float
    name = "alpha_words"

    def drops(self, text: str) -> bool:
        ws = words(text)
        return not ws or sum(any(c.isalpha() for c in w) for w in ws) / len(ws) < self.min_ratio


@dataclass
class BulletLines(DocFilter):
    max_ratio: float
    name = "bullet_lines"

    def drops(self, text: str) -> bool:
        lines = prose_lines(text)
        return bool(lines) and sum(s.startswith(BULLETS) for s in lines) / len(lines) > self.max_ratio


@dataclass
class EllipsisLines(DocFilter):
    max_ratio: float
    name = "ellipsis_lines"

    def drops(self, text: str) -> bool:
        lines = prose_lines(text)
        return bool(lines) and sum(s.endswith(ELLIPSES) for s in lines) / len(lines) > self.max_ratio


@dataclass
class RepeatedLines(DocFilter):
    """Gopher: boilerplate and spam repeat whole lines."""

    max_line_share: float | None
    max_char_share: float | None
    name = "repeated_lines"

    def drops(self, text: str) -> bool:
        lines = [s for line in text.splitlines() if (s := line.strip())]
        if not lines:
            return False
        seen: set[str] = set()
        dup_lines = dup_chars = 0
        for s in lines:
            if s in seen:
                dup_lines += 1
                dup_chars += len(s)
            seen.add(s)
        total_chars = sum(map(len, lines))
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
        total = sum(map(len, ws))
        for n, limit in self.max_shares.items():
            if len(ws) < n:
                continue
            gram, count = Counter(ws[i : i + n] for i in range(len(ws) - n + 1)).most_common(1)[0]
            if count > 1 and count * sum(map(len, gram)) / total > limit:
                return True
        return False


def duplicated_ngram_chars(ws: tuple[str, ...], n: int) -> int:
    """Characters of words inside n-grams that repeat an earlier n-gram (overlaps counted once, as Gopher)."""
    seen: set[tuple[str, ...]] = set()
    dup = [False] * len(ws)
    for i in range(len(ws) - n + 1):
        gram = ws[i : i + n]
        if gram in seen:
            dup[i : i + n] = [True] * n
        seen.add(gram)
    return sum(len(w) for w, d in zip(ws, dup, strict=True) if d)


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
        total = sum(map(len, ws))
        return any(
            len(ws) >= n and duplicated_ngram_chars(ws, n) / total > lim for n, lim in self.max_shares.items()
        )


class Blocklist(DocFilter):
    """C4-style: blocklisted terms as whole words, case-insensitive."""

    name = "blocklist"

    def __init__(self, terms: list[str], min_hits: int = 1):
        terms = sorted({t.strip() for t in terms if t.strip()}, key=len, reverse=True)  # longest first
        alternation = "|".join(re.escape(t) for t in terms)
        self.pattern = re.compile(rf"(?<!\w)(?:{alternation})(?!\w)", re.IGNORECASE) if terms else None
        self.min_hits = min_hits

    def drops(self, text: str) -> bool:
        if self.pattern is None:
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
                samples.append({"reason": reason, "id": doc.id, "source": doc.source,
                                "words": len(words(doc.text)), "text": doc.text[:SAMPLE_CHARS]})  # fmt: skip
    return FilterPart(total, chars_in, writer.count, writer.chars, dropped, samples)


def filter_documents(
    cfg: FilterConfig,
    inputs: dict[str, Manifest],
    out: Path,
    log_: MetricLogger,
    map_shards: ShardMap | None = None,
) -> StageReport:
    """Map `filter_shard` over the input shards, then add up the counts and keep the first samples per
    reason: the same result as one pass over the whole input, whichever map ran the shards."""
    source = next(iter(inputs.values()))
    parts = (map_shards or map_here)(partial(filter_shard, cfg, out), shard_jobs(source))
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
