"""The `filter` stage: each heuristic drops what it should and keeps clean text; counts, samples, gate."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from conf.collect import CollectConfig, PydocsSource
from conf.filter import FilterConfig
from tasks import collect as collect_mod
from tasks import filter as filter_
from tasks.common.data import Document, read_documents
from tasks.common.stage import QualityGateError, StageSpec, run_stage
from tasks.common.tracking import MetricLogger
from tests.helpers import documents_stage, seal

CLEAN = (
    "Return a new sorted list from the items in iterable. A custom key function can be supplied to "
    "customize the sort order, and the reverse flag can be set to request the result in descending order.\n\n"
    "The built-in sorted function is guaranteed to be stable: it never changes the relative order of "
    "elements that compare equal. This is helpful for sorting in multiple passes, for example by "
    "department and then by salary grade.\n\n"
    ">>> sorted([3, 1, 2])\n[1, 2, 3]\n>>> sorted('bca', reverse=True)\n['c', 'b', 'a']"
)
FILLER = " ".join(f"word{i}x" for i in range(60))  # 60 distinct words, nothing repeated

BAD = {
    "too_few_words": "Too short to be a document.",
    "too_many_words": " ".join(f"token{i}" for i in range(300)),
    "mean_word_length": "a b c d e f g h i j k l m n o p q r s t u v w x y z " * 2,
    "symbol_ratio": " ".join(f"#tag{i} word{i}" for i in range(30)),
    "digit_ratio": " ".join(f"{i * 7919:08d} ok" for i in range(30)),
    "alpha_words": " ".join(["-->", "===", "+++", "***", "<<<", "alpha"] * 6),
    "bullet_lines": "\n".join(f"- item number {i} in a long list of things" for i in range(12)),
    "ellipsis_lines": "\n".join(f"line {i} of a text that trails off again and again ..." for i in range(12)),
    "repeated_lines": "\n".join(
        ["Buy cheap watches online today now"] * 5 + [f"other line {i}" for i in range(5)]
    ),
    "top_ngram": "click here " * 12 + FILLER,
    "duplicate_ngrams": ("the quick brown fox jumps over the lazy dog today " * 3) + FILLER,
    "blocklist": CLEAN.replace("salary grade", "salary grade, what a load of Bullshit"),
}

SMALL = {"max_words": 200}  # so `too_many_words` fires on a short test text


def doc(text: str, i: int = 0) -> Document:
    return Document(id=f"d{i}", text=text, source="test")


def reasons(cfg: FilterConfig, text: str) -> list[str]:
    """Every filter that objects (not just the first)."""
    return [f.name for f in filter_.build_filters(cfg) if f.reason(doc(text))]


def test_clean_text_passes_every_filter():
    assert reasons(FilterConfig(**SMALL), CLEAN) == []
    assert reasons(FilterConfig(**SMALL), CLEAN + "\n\n" + FILLER) == []


@pytest.mark.parametrize("reason", sorted(BAD))
def test_each_filter_drops_its_case(reason):
    cfg = FilterConfig(**SMALL)
    assert reason in reasons(cfg, BAD[reason])
    assert filter_.first_reason(filter_.build_filters(cfg), doc(BAD[reason])) == reason


def test_disabling_a_filter_keeps_its_case():
    off = {
        "symbol_ratio": {"max_symbol_word_ratio": None},
        "top_ngram": {"top_ngram_max_chars": {}},
        "blocklist": {"blocklist": []},
        "too_few_words": {"min_words": None},
        "repeated_lines": {"max_repeated_lines": None, "max_repeated_line_chars": None},
    }
    for reason, overrides in off.items():
        cfg = FilterConfig(**overrides)
        assert reason not in [f.name for f in filter_.build_filters(cfg)]
        assert reason not in reasons(cfg, BAD[reason])


def test_blocklist_whole_words_case_insensitive_and_phrases():
    block = filter_.Blocklist(["shit", "bad phrase"], min_hits=1)
    assert block.reason(doc("What a load of SHIT.")) == "blocklist"
    assert block.reason(doc("Shiitake and shitake mushrooms; a shitty-free text")) is None
    assert block.reason(doc("this is a Bad  Phrase? no: a bad phrase!")) == "blocklist"
    assert filter_.Blocklist(["shit"], min_hits=2).reason(doc("shit once")) is None
    assert filter_.Blocklist(["a.b"]).reason(doc("axb")) is None  # terms are literal, not regexes


def test_doctest_lines_do_not_count_as_symbols_or_ellipses():
    doctest = "Show a loop.\n\n" + "\n".join(
        f">>> for i in range({i}):\n...     print(i)  # show {i}" for i in range(10)
    )
    cfg = FilterConfig(min_words=None, min_alpha_word_ratio=None, max_mean_word_length=None)
    assert "symbol_ratio" not in reasons(cfg, doctest) and "ellipsis_lines" not in reasons(cfg, doctest)


def test_ngram_filters_skip_short_documents():
    short = "the internal flag is true and the internal flag is set when the internal flag is true again"
    assert "top_ngram" not in reasons(FilterConfig(), short)  # 18 words < ngram_min_words=50
    assert "top_ngram" in reasons(FilterConfig(ngram_min_words=0), short)


def test_duplicated_ngram_chars_counts_each_word_once():
    ws = tuple("a b c a b c a b c".split())
    assert filter_.duplicated_ngram_chars(ws, 3) == 6  # the 2nd and 3rd "a b c"
    assert filter_.duplicated_ngram_chars(tuple("a b c d".split()), 2) == 0


class ArtifactRecorder(MetricLogger):
    """The logger interface, keeping what a stage hands to MLflow."""

    def __init__(self):
        self.artifacts: list[tuple[str, str | None]] = []

    def log_artifact(self, path, artifact_path=None) -> None:
        self.artifacts.append((str(path), artifact_path))


def run_filter(tmp_path, texts: list[str], log: MetricLogger | None = None, **cfg) -> tuple:
    upstream = documents_stage(tmp_path, [doc(t, i) for i, t in enumerate(texts)], stage="collect")
    out = tmp_path / "filter"
    out.mkdir()
    report = filter_.filter_documents(FilterConfig(**cfg), {"collect": upstream}, out, log or MetricLogger())
    manifest = seal(out, "filter", counts=report.counts, metrics=report.metrics)
    samples = [json.loads(line) for line in (out / filter_.SAMPLES_FILE).read_text().splitlines()]
    return report, list(read_documents(manifest)), samples


def test_stage_counts_by_reason_and_writes_samples(tmp_path):
    clean = [CLEAN.replace("department", f"department {i}") for i in range(20)]
    bad = [BAD[r] for r in sorted(BAD)] + [BAD["digit_ratio"].replace("ok", "fine")] * 3
    log = ArtifactRecorder()
    report, kept, samples = run_filter(tmp_path, clean + bad, log, samples_per_reason=2, **SMALL)
    assert log.artifacts == [(str(tmp_path / "filter" / filter_.SAMPLES_FILE), "filter")]
    counts = report.counts
    assert [d.id for d in kept] == [f"d{i}" for i in range(20)]
    assert counts["documents_in"] == 20 + len(BAD) + 3 and counts["documents"] == 20
    assert counts["dropped_digit_ratio"] == 4
    assert all(counts[f"dropped_{r}"] == 1 for r in BAD if r != "digit_ratio")
    assert counts["dropped"] == len(BAD) + 3
    assert report.metrics["dropped_share"] == pytest.approx(counts["dropped"] / counts["documents_in"])
    by_reason = {}
    for s in samples:
        by_reason.setdefault(s["reason"], []).append(s)
    assert len(by_reason["digit_ratio"]) == 2 and set(by_reason) == set(BAD)
    assert by_reason["blocklist"][0]["text"] == BAD["blocklist"] and by_reason["blocklist"][0][
        "id"
    ].startswith("d")


def test_gate_fails_when_too_much_is_dropped(tmp_path):
    upstream = documents_stage(tmp_path, [doc(CLEAN, 0), doc(BAD["too_few_words"], 1)], stage="collect")
    spec = StageSpec(
        "filter", filter_.filter_documents, ("collect",), filter_.STAGE_VERSION, gate=filter_.gate
    )
    with pytest.raises(QualityGateError, match=r"dropped 50.0% of documents.*max_dropped_share=0.2"):
        run_stage(spec, SimpleNamespace(filter=FilterConfig()), {"collect": upstream}, tmp_path / "art")
    ok = run_stage(
        spec,
        SimpleNamespace(filter=FilterConfig(max_dropped_share=0.5)),
        {"collect": upstream},
        tmp_path / "art",
    )
    assert ok.manifest.counts["documents"] == 1 and filter_.SAMPLES_FILE in ok.manifest.files


def test_config_errors_name_the_key():
    with pytest.raises(ValidationError, match="filter.min_words=50 is greater than filter.max_words=10"):
        FilterConfig(min_words=50, max_words=10)
    with pytest.raises(ValidationError, match="dup_ngram_max_chars"):
        FilterConfig(dup_ngram_max_chars={5: 1.5})
    with pytest.raises(ValidationError, match="max_digit_ratio"):
        FilterConfig(max_digit_ratio=2)


def test_defaults_drop_a_small_share_of_pydocs(tmp_path):
    """The smoke preset's corpus (600 stdlib docstrings): the default filters drop only a few percent."""
    out = tmp_path / "collect"
    out.mkdir()
    report = collect_mod.collect(
        CollectConfig(sources=[PydocsSource()], max_docs=600), {}, out, MetricLogger()
    )
    upstream = seal(out, "collect", counts=report.counts)
    fout = tmp_path / "filter"
    fout.mkdir()
    result = filter_.filter_documents(FilterConfig(), {"collect": upstream}, fout, MetricLogger())
    assert 0 < result.counts["dropped"] and result.metrics["dropped_share"] < 0.05
    assert result.counts["dropped_blocklist"] == 0
