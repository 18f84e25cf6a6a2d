"""The filter's fast paths decide exactly as the plain definitions do (issue 14: same output, faster).

`Reference` holds the straightforward implementations the stage used before (per character and per
n-gram Python loops); every filter must agree with it on every document of a generated web-like corpus
and on texts chosen to hit the edge cases of the shortcuts (Unicode digits, spaces and letters, lone
surrogates, characters that case-fold onto ASCII, repeated n-grams with ties).
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache

from bench.webcorpus import WebCorpus
from conf.filter import FilterConfig
from tasks import filter as filter_
from tasks.common.data import Document, read_documents
from tasks.common.shards import PoolShardMap
from tasks.common.tracking import MetricLogger
from tests.helpers import documents_stage, seal

ELLIPSES = ("...", "…")


class Reference:
    """The definitions, written the obvious way (the stage's code before issue 14)."""

    @staticmethod
    def digit_ratio(text: str, max_ratio: float) -> bool:
        chars = [c for c in text if not c.isspace()]
        return bool(chars) and sum(c.isdigit() for c in chars) / len(chars) > max_ratio

    @staticmethod
    def alpha_words(text: str, min_ratio: float) -> bool:
        ws = text.split()
        return not ws or sum(any(c.isalpha() for c in w) for w in ws) / len(ws) < min_ratio

    @staticmethod
    def repeated_lines(text: str, line_share: float, char_share: float) -> bool:
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
        return dup_lines / len(lines) > line_share or dup_chars / sum(map(len, lines)) > char_share

    @staticmethod
    def top_ngram(text: str, shares: dict[int, float], min_words: int) -> bool:
        ws = tuple(text.split())
        if len(ws) < min_words:
            return False
        total = sum(map(len, ws))
        for n, limit in shares.items():
            if len(ws) < n:
                continue
            gram, count = Counter(ws[i : i + n] for i in range(len(ws) - n + 1)).most_common(1)[0]
            if count > 1 and count * sum(map(len, gram)) / total > limit:
                return True
        return False

    @staticmethod
    def duplicated_chars(ws: tuple[str, ...], n: int) -> int:
        seen: set[tuple[str, ...]] = set()
        dup = [False] * len(ws)
        for i in range(len(ws) - n + 1):
            gram = ws[i : i + n]
            if gram in seen:
                dup[i : i + n] = [True] * n
            seen.add(gram)
        return sum(len(w) for w, d in zip(ws, dup, strict=True) if d)

    @classmethod
    def duplicate_ngrams(cls, text: str, shares: dict[int, float], min_words: int) -> bool:
        ws = tuple(text.split())
        if len(ws) < min_words:
            return False
        total = sum(map(len, ws))
        return any(len(ws) >= n and cls.duplicated_chars(ws, n) / total > lim for n, lim in shares.items())

    @staticmethod
    def blocklist(text: str, terms: list[str]) -> bool:
        terms = sorted({t.strip() for t in terms if t.strip()}, key=len, reverse=True)
        alternation = "|".join(re.escape(t) for t in terms)
        return re.search(rf"(?<!\w)(?:{alternation})(?!\w)", text, re.IGNORECASE) is not None


EDGE_CASES = [
    "",
    "   \n\t ",
    "٣٤٥ ١٢ digits in Arabic-Indic ² ³ superscripts ① circled and 12345 plain",
    "words\x1cseparated\x1dby\x1einformation\x1fseparators and\u3000ideographic\u2003em spaces",
    "lone \ud800 surrogate \udfff in text with 1 2 3 numbers",
    "math digits 𝟙𝟚𝟛 in plane 1, tags \U000e0041\U000e0042 past the table, and 42 ok",
    "ΣΊΣΥΦΟΣ ελληνικά κείμενα και ᾼ titlecase ǅ letters",
    "a b a b a b a b c d c d c d c d",  # ties between equally frequent 2-grams: the first one counts
    "x y z " * 40,
    "the cat sat on the mat and the cat sat on the mat again and again " * 5,
    "What a load of SHİT, said the ſhitake farmer to the Kelvin-sign Kunt.",  # İ ſ K fold onto ASCII
    "bitchy is not a whole word; b-itch neither; but (porn) is, and Porno too",
    "--> === +++ *** <<< alpha " * 6,
    "#tag " * 20 + "prose words here ... and … there",
    "\n".join(f"- item {i}" for i in range(20)),
    "\n".join(["same line repeated"] * 6 + ["other"] * 2),
]


@lru_cache(maxsize=1)
def corpus() -> list[str]:
    return [r["text"] for r in WebCorpus(800, seed=7).records()] + EDGE_CASES


def test_each_fast_filter_decides_as_the_reference():
    cfg = FilterConfig(ngram_min_words=0)
    f = {x.name: x for x in filter_.build_filters(cfg)}
    checks = {
        "digit_ratio": lambda t: Reference.digit_ratio(t, cfg.max_digit_ratio),
        "alpha_words": lambda t: Reference.alpha_words(t, cfg.min_alpha_word_ratio),
        "repeated_lines": lambda t: Reference.repeated_lines(
            t, cfg.max_repeated_lines, cfg.max_repeated_line_chars
        ),
        "top_ngram": lambda t: Reference.top_ngram(t, cfg.top_ngram_max_chars, 0),
        "duplicate_ngrams": lambda t: Reference.duplicate_ngrams(t, cfg.dup_ngram_max_chars, 0),
        "blocklist": lambda t: Reference.blocklist(t, cfg.blocklist),
    }
    decided: Counter[str] = Counter()
    for text in corpus():
        for name, reference in checks.items():
            expected = reference(text)
            assert f[name].drops(text) == expected, (name, text[:200])
            decided[name] += expected
    assert all(decided[name] > 0 for name in checks), decided  # every filter dropped something


def test_duplicated_ngram_chars_match_the_reference_for_every_n():
    for text in corpus()[:300] + EDGE_CASES:
        ws = tuple(text.split())
        for n in range(1, 12):
            assert filter_.duplicated_ngram_chars(ws, n) == Reference.duplicated_chars(ws, n), (n, text[:80])


def test_only_the_listed_characters_fold_onto_ascii():
    """The blocklist's shortcut trusts FOLDS_TO_ASCII: check it against re's own case folding."""
    any_ascii = re.compile(r"[\x00-\x7f]", re.IGNORECASE)
    folding = "".join(chr(c) for c in range(128, 0x110000) if any_ascii.fullmatch(chr(c)))
    assert folding == filter_.FOLDS_TO_ASCII


def test_stage_output_on_two_workers_is_one_pass_over_the_input(tmp_path):
    workers = 2
    texts = corpus()[:600]
    docs = [Document(id=f"w{i}", text=t, source="web") for i, t in enumerate(texts) if t.strip()]
    upstream = documents_stage(tmp_path, docs, stage="collect", shard_docs=150)
    out = tmp_path / "filter"
    out.mkdir()
    cfg = FilterConfig(workers=workers, max_dropped_share=1.0)
    report = filter_.filter_documents(cfg, {"collect": upstream}, out, MetricLogger())
    kept = list(read_documents(seal(out, "filter", counts=report.counts)))
    f = filter_.build_filters(cfg)
    expected = [d.id for d in docs if filter_.first_reason(f, d) is None]
    assert [d.id for d in kept] == expected
    assert sorted(p.name for p in (out / "documents").iterdir()) == [f"shard-{i:05d}.jsonl" for i in range(4)]


def test_pool_shard_map_returns_results_in_job_order():
    assert PoolShardMap(2)(abs, [-3, 1, -2, 0]) == [3, 1, 2, 0]
    assert list(PoolShardMap(1).imap(abs, [-1])) == [1]
