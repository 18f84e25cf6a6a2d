"""The `tokenizer` stage: round-trips, special tokens, chat template, shards, decontamination."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from conf.tokenizer import SPECIAL_TOKENS, TokenizerConfig
from tasks.common.artifacts import Manifest, list_outputs
from tasks.common.data import Document
from tasks.common.tokens import open_split, read_index
from tasks.common.tracking import MetricLogger
from tasks.tokenizer import CHAT_TEMPLATE, VAL, split_of, train_tokenizer
from tests.helpers import documents_stage, seal

WORDS = (
    "the module returns a value when called with an argument list of strings and raises an error if the "
    "object is closed socket buffer file path encoding default timeout connection thread lock queue event "
    "café naïve résumé façade über straße 東京 数据 函数 🐍 🎉"
).split()
ROUNDTRIP = [
    "Hello, world!",
    "naïve café résumé — façade, Straße, Ærøskøbing",
    "日本語のテキストと中文字符，还有한국어.",
    "emoji 🐍🎉👩‍👩‍👧 and flags 🇫🇷 plus ZWJ",
    "tabs\tand   runs    of spaces\n\n\n  indented\r\nCRLF line\u00a0nbsp\u2003em",
    "   leading and trailing   ",
    "x",
    "",
]
MSGS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What does abc do?"},
    {"role": "assistant", "content": "Abstract base classes, naïvely 🐍."},
]

# Eval documents align_data holds out: two are in the corpus under the same id, one is not, and one
# corpus document copies a 13-word passage of an eval document under another id.
EVAL_TEXT = (
    "a decorator indicating abstract methods requires that the metaclass is derived from it completely"
)
OVERLAP_TEXT = (
    "see also: a decorator indicating abstract methods requires that the metaclass is derived from it too"
)
NEAR_MISS = (  # 12 shared
    "unrelated words then decorator indicating abstract methods requires that the metaclass "
    "is derived from it"
)


def corpus_docs(n: int = 240, seed: int = 0) -> list[Document]:
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        lines = [
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 14))).capitalize() + "."
            for _ in range(4)
        ]
        text = "\n".join(lines) + "\n\n    >>> f(x)  # example"
        docs.append(Document(id=f"doc{i:04d}", text=text, source="test", meta={"module": f"m{i % 17}"}))
    if n < 20:
        return docs
    docs[3] = Document(id="eval-a", text=EVAL_TEXT, source="test")
    docs[7] = Document(id="eval-b", text="held-out docstring, listed by id", source="test")
    docs[11] = Document(id="copy", text=OVERLAP_TEXT, source="test")
    docs[13] = Document(id="near-miss", text=NEAR_MISS, source="test")
    docs[17] = Document(
        id="spells-eos", text="the literal <|eos|> and <|user|> stay plain text", source="test"
    )
    return docs


def align_stage(root: Path) -> Manifest:
    folder = root / "align_data" / "test"
    folder.mkdir(parents=True)
    eval_docs = [
        ("eval-a", EVAL_TEXT),
        ("eval-b", "held-out docstring, listed by id"),
        ("not-in-corpus", "zzz"),
    ]
    with open(folder / "eval_documents.jsonl", "w", encoding="utf-8") as fh:
        for doc_id, text in eval_docs:
            fh.write(json.dumps({"id": doc_id, "text": text}) + "\n")
    return seal(folder, "align_data")


CFG = TokenizerConfig(vocab_size=400, val_fraction=0.2, parallel=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    docs = corpus_docs()
    inputs = {"dedup": documents_stage(root, docs, "dedup"), "align_data": align_stage(root)}
    out = root / "tokenizer" / "a"
    out.mkdir(parents=True)
    report = train_tokenizer(CFG, inputs, out, _Recorder())
    return {"root": root, "docs": docs, "inputs": inputs, "out": out, "report": report}


class _Recorder(MetricLogger):
    """Records what the stage logs, so tests can check the reports reach the tracker."""

    def __init__(self):
        self.logged: dict[str, object] = {}

    def log_dict(self, data, artifact_file):
        self.logged[artifact_file] = data

    def log_text(self, text, artifact_file):
        self.logged[artifact_file] = text

    def log_artifact(self, path, artifact_path=None):
        self.logged[f"artifact:{Path(path).name}"] = artifact_path


@pytest.fixture(scope="module")
def hf_tok(built):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(built["out"] / "tokenizer")


def test_vocab_size_must_exceed_bytes_and_specials():
    floor = 256 + len(SPECIAL_TOKENS)
    with pytest.raises(ValidationError, match=r"tokenizer\.vocab_size=263 must exceed 263"):
        TokenizerConfig(vocab_size=floor)
    assert TokenizerConfig(vocab_size=floor + 1).vocab_size == floor + 1
    with pytest.raises(ValidationError, match="val_fraction"):
        TokenizerConfig(val_fraction=0)


@pytest.mark.parametrize("text", ROUNDTRIP)
def test_roundtrip_exact(hf_tok, text):
    ids = hf_tok(text, add_special_tokens=False)["input_ids"]
    assert hf_tok.decode(ids) == text
    assert all(i >= len(SPECIAL_TOKENS) for i in ids)  # plain text never yields a control token


def test_special_tokens_are_single_ids(hf_tok):
    for i, token in enumerate(SPECIAL_TOKENS):
        assert hf_tok(token, add_special_tokens=False)["input_ids"] == [i]
    assert (hf_tok.bos_token, hf_tok.eos_token, hf_tok.pad_token) == SPECIAL_TOKENS[:3]
    assert (hf_tok.bos_token_id, hf_tok.eos_token_id, hf_tok.pad_token_id) == (0, 1, 2)
    assert hf_tok.model_max_length == CFG.model_max_length
    assert len(hf_tok) == 400
    assert hf_tok("hi")["input_ids"] == hf_tok("hi", add_special_tokens=False)["input_ids"]  # adds no BOS/EOS


def test_chat_template_renders_as_specified(hf_tok):
    assert hf_tok.chat_template == CHAT_TEMPLATE
    assert hf_tok.apply_chat_template(MSGS, tokenize=False) == (
        "<|system|>\nBe brief.<|end|>\n<|user|>\nWhat does abc do?<|end|>\n"
        "<|assistant|>\nAbstract base classes, naïvely 🐍.<|eos|>\n"
    )
    assert hf_tok.apply_chat_template(MSGS[1:2], tokenize=False, add_generation_prompt=True) == (
        "<|user|>\nWhat does abc do?<|end|>\n<|assistant|>\n"
    )
    with pytest.raises(Exception, match="unknown chat role tool"):
        hf_tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_assistant_mask_covers_the_answer_only(hf_tok):
    from trl.chat_template_utils import is_chat_template_stop_token_trained

    convo = MSGS + [{"role": "user", "content": "More?"}, {"role": "assistant", "content": "No."}]
    out = hf_tok.apply_chat_template(
        convo, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = out["input_ids"], out["assistant_masks"]
    spans, cur = [], []
    for i, m in zip(ids, mask, strict=True):
        if m:
            cur.append(i)
        elif cur:
            spans.append(cur)
            cur = []
    assert [hf_tok.decode(s) for s in spans] == ["Abstract base classes, naïvely 🐍.<|eos|>", "No.<|eos|>"]
    # the prompt is a token prefix of prompt+answer, so trl's completion masks line up too
    prompt = hf_tok.apply_chat_template(MSGS[:2], add_generation_prompt=True, return_dict=True)["input_ids"]
    assert ids[: len(prompt)] == prompt and not any(mask[: len(prompt)])
    assert is_chat_template_stop_token_trained(hf_tok)  # trl's own check: EOS is inside the mask


def test_shards_and_index(built, hf_tok):
    out, report = built["out"], built["report"]
    index = read_index(out)
    assert (index["dtype"], index["vocab_size"], index["eos_id"], index["bos_id"], index["pad_id"]) == (
        "uint16",
        400,
        1,
        0,
        2,
    )
    kept = [d for d in built["docs"] if d.id not in {"eval-a", "eval-b", "copy"}]
    for split in ("train", "val"):
        arrays = open_split(out, split)
        tokens = np.concatenate(arrays)
        assert len(tokens) == report.counts[f"{split}_tokens"]
        assert tokens[-1] == 1
        # each document, in corpus order, decodes back exactly and is followed by exactly one EOS
        want = [d.text for d in kept if (split_of(d.id, CFG.val_fraction) == VAL) == (split == "val")]
        cuts = np.flatnonzero(tokens == 1)
        assert len(cuts) == len(want) == report.counts[f"{split}_docs"]
        got = [hf_tok.decode(seg) for seg in np.split(tokens, cuts + 1)[:-1]]
        assert [g.removesuffix("<|eos|>") for g in got] == want
    assert report.counts["train_docs"] + report.counts["val_docs"] == report.counts["documents"] == len(kept)


def test_decontamination_drops_listed_and_overlapping(built):
    report, out = built["report"], built["out"]
    assert report.counts["decontaminated_docs"] == 3
    assert report.counts["decontaminated_listed"] == 2
    assert report.counts["decontaminated_overlap"] == 1
    dropped = [json.loads(x) for x in (out / "reports" / "decontaminated.jsonl").read_text().splitlines()]
    assert {d["id"]: d["reason"] for d in dropped} == {
        "eval-a": "listed",
        "eval-b": "listed",
        "copy": "overlap",
    }
    assert next(d for d in dropped if d["id"] == "copy")["eval_id"] == "eval-a"
    assert report.extra["decontaminated_against"] == built["inputs"]["align_data"].content_hash


def test_ngram_length_is_configurable(built, tmp_path):
    """At n=12 the 12-word near miss overlaps too; n=0 drops listed ids only."""
    for n, overlap in ((12, 2), (0, 0)):
        out = tmp_path / f"n{n}"
        out.mkdir()
        cfg = CFG.model_copy(update={"decontam_ngram": n})
        report = train_tokenizer(cfg, built["inputs"], out, _Recorder())
        assert report.counts["decontaminated_overlap"] == overlap
        assert report.counts["decontaminated_listed"] == 2


def test_reports_and_metrics(built):
    report, out = built["report"], built["out"]
    m = report.metrics
    assert 1.0 < m["bytes_per_token_val"] < 10
    assert 0 < m["vocab_used_share"] <= 1
    longest = json.loads((out / "reports" / "longest_tokens.json").read_text())
    assert len(longest) == 50
    assert [t["bytes"] for t in longest] == sorted((t["bytes"] for t in longest), reverse=True)
    assert longest[0]["bytes"] > 4
    assert (out / "reports" / "sample_segmentation.txt").read_text().count("|") > 10


def test_reports_reach_the_logger(tmp_path, built):
    log = _Recorder()
    out = tmp_path / "o"
    out.mkdir()
    train_tokenizer(CFG, built["inputs"], out, log)
    assert log.logged["artifact:tokenizer"] == "tokenizer"
    assert log.logged["reports/longest_tokens.json"][0]["bytes"] > 4


def test_train_max_chars_caps_the_bpe_training_text(built, tmp_path):
    """Trained on ~300 characters, BPE runs out of frequent pairs: the index carries the real vocab size."""
    out = tmp_path / "capped"
    out.mkdir()
    report = train_tokenizer(
        CFG.model_copy(update={"train_max_chars": 300}), built["inputs"], out, _Recorder()
    )
    vocab = report.counts["vocab_size"]
    assert 256 + len(SPECIAL_TOKENS) < vocab < built["report"].counts["vocab_size"] == 400
    assert read_index(out)["vocab_size"] == vocab
    assert max(int(a.max()) for a in open_split(out, "train")) < vocab


def test_deterministic(built, tmp_path):
    out = tmp_path / "again"
    out.mkdir()
    train_tokenizer(
        CFG.model_copy(update={"parallel": True, "batch_docs": 7}), built["inputs"], out, _Recorder()
    )
    first = {k: v.sha256 for k, v in list_outputs(built["out"]).items()}
    second = {k: v.sha256 for k, v in list_outputs(out).items()}
    assert first == second
    assert "tokenizer/tokenizer.json" in first and "tokens/train-00000.bin" in first


def test_runs_without_align_data_and_rolls_shards(tmp_path):
    inputs = {"dedup": documents_stage(tmp_path, corpus_docs(60, seed=1), "dedup")}
    out = tmp_path / "out"
    out.mkdir()
    report = train_tokenizer(CFG.model_copy(update={"shard_tokens": 500}), inputs, out, _Recorder())
    assert report.counts["decontaminated_docs"] == 0 and report.extra["decontaminated_against"] is None
    assert report.extra["decontamination"].startswith("decontamination skipped: no evaluation set")
    assert report.counts["documents"] == 60
    index = read_index(out)
    assert len(index["splits"]["train"]) > 1
    assert all(s["tokens"] <= 500 for s in index["splits"]["train"][:-1])
    assert sum(len(a) for a in open_split(out, "train")) == report.counts["train_tokens"]


def test_empty_validation_split_names_the_key(tmp_path):
    inputs = {"dedup": documents_stage(tmp_path, corpus_docs(19), "dedup")}
    cfg = CFG.model_copy(update={"val_fraction": 1e-9})
    with pytest.raises(ValueError, match=r"tokenizer\.val_fraction"):
        train_tokenizer(cfg, inputs, tmp_path, _Recorder())


def test_registered_stage_runs_through_the_runner(tmp_path):
    from conf.schema import PipelineConfig
    from flows.stages import STAGES
    from tasks.common.stage import run_stage

    spec = STAGES["tokenizer"]
    inputs = {}
    for name in spec.inputs:
        inputs[name] = (
            align_stage(tmp_path) if name == "align_data" else documents_stage(tmp_path, corpus_docs(), name)
        )
    cfg = PipelineConfig(tokenizer={"vocab_size": 300, "val_fraction": 0.2})
    result = run_stage(spec, cfg, inputs, tmp_path / "art")
    m = result.manifest
    assert m.counts["vocab_size"] == 300 and m.metrics["bytes_per_token_val"] > 1
    assert "tokenizer/tokenizer.json" in m.files and "tokens/index.json" in m.files
    assert run_stage(spec, cfg, inputs, tmp_path / "art").status == "cached"


# What the tokenizer stage made of `corpus_docs()` + `align_stage` with `CFG` before it streamed the plan
# through a process pool and prefetched batches (git 3792622, tokenizers 0.23.3): sha256 of its files.
RECORDED = {
    "tokens/train-00000.bin": "ab1d52d09f1337c7",
    "tokenizer/tokenizer.json": "923b47ffb9a27bb2",
}
RECORDED_ALL = "a59802b558263ac9"  # sha256 of the sorted {file: sha256} of every output file


def test_streamed_pool_build_is_byte_identical_to_the_recorded_one(tmp_path):
    """Seven corpus shards planned by two worker processes, tiny batches, Rust threads on: the same bytes
    as the one-process build recorded above (the outputs never depend on workers, shards or batches)."""
    import hashlib

    import tokenizers

    docs = corpus_docs()
    inputs = {
        "dedup": documents_stage(tmp_path, docs, "dedup", shard_docs=37),
        "align_data": align_stage(tmp_path),
    }
    out = tmp_path / "out"
    out.mkdir()
    cfg = CFG.model_copy(update={"workers": 2, "parallel": True, "batch_docs": 7})
    train_tokenizer(cfg, inputs, out, _Recorder())
    files = {k: v.sha256 for k, v in sorted(list_outputs(out).items())}
    assert files == {k: v.sha256 for k, v in sorted(list_outputs(_built_once(tmp_path, docs)).items())}
    if tokenizers.__version__ == "0.23.3":  # BPE merges may change with the library
        assert {k: files[k][:16] for k in RECORDED} == RECORDED
        assert hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16] == RECORDED_ALL


def _built_once(root: Path, docs: list[Document]) -> Path:
    """The same corpus in one shard, one process, no prefetching contention: the reference build."""
    inputs = {"dedup": documents_stage(root / "one", docs, "dedup"), "align_data": align_stage(root / "one")}
    out = root / "one-out"
    out.mkdir()
    train_tokenizer(CFG.model_copy(update={"workers": 1}), inputs, out, _Recorder())
    return out


def test_decontaminates_against_user_eval_files(tmp_path):
    """Every string of a row of `decontam_files` (nested message contents too) is eval text; a folder
    gives all its files; an overlapping corpus document is dropped; the files key the stage hash."""
    from conf.schema import PipelineConfig
    from flows.stages import STAGES

    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "qa.jsonl").write_text(
        json.dumps({"question": "Which decorator?", "choices": [{"text": EVAL_TEXT}], "label": 0}) + "\n"
    )
    (bench / "notes.txt").write_text("a note with no long passage")
    inputs = {"dedup": documents_stage(tmp_path, corpus_docs(60, seed=1), "dedup")}
    out = tmp_path / "out"
    out.mkdir()
    cfg = CFG.model_copy(update={"decontam_files": [str(bench)]})
    report = train_tokenizer(cfg, inputs, out, _Recorder())
    assert report.counts["eval_docs_decontam_files"] == 2 and report.counts["eval_docs_align_data"] == 0
    assert report.counts["decontaminated_overlap"] == 2 and "decontamination" not in report.extra
    dropped = [
        json.loads(line) for line in (out / "reports" / "decontaminated.jsonl").read_text().splitlines()
    ]
    assert [d["id"] for d in dropped] == ["eval-a", "copy"]  # the eval text itself, and a copy of a passage
    assert dropped[1]["eval_id"].endswith("qa.jsonl:1")
    pipeline = PipelineConfig(tokenizer={"decontam_files": [str(bench)]})
    before = STAGES["tokenizer"].keyed_config(pipeline)
    (bench / "notes.txt").write_text("edited")
    assert STAGES["tokenizer"].keyed_config(pipeline) != before
    with pytest.raises(ValueError, match="decontam_files: .*missing.jsonl does not exist"):
        train_tokenizer(
            CFG.model_copy(update={"decontam_files": [str(tmp_path / "missing.jsonl")]}),
            inputs,
            out,
            _Recorder(),
        )


def test_prefetched_keeps_order_raises_reader_errors_and_stops_early():
    from tasks.tokenizer import prefetched

    assert list(prefetched(iter(range(100)), depth=3)) == list(range(100))

    def broken():
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(prefetched(broken()))
    endless = prefetched(iter(range(10**9)))
    assert next(endless) == 0
    endless.close()  # the reader thread stops instead of hanging the stage
