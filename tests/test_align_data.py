"""align_data: pairs from pydocs-like documents, split by module, rejected answers, user datasets."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from conf.align_data import AlignDataConfig, DatasetSource
from tasks.align_data import (
    AlignDataError,
    align_data,
    make_rejected,
    shuffled,
    split_sentences,
    summary,
    truncated,
)
from tasks.common.data import Document
from tasks.common.jsonl import read_jsonl
from tasks.common.splits import is_eval_module
from tasks.common.tracking import MetricLogger
from tests.helpers import documents_stage

FRACTION = 0.3


def modules_on_both_sides(n_train: int = 3, n_eval: int = 2) -> tuple[list[str], list[str]]:
    """Module names that `is_eval_module` puts on each side of the split (found, not assumed)."""
    train, evals = [], []
    for i in range(200):
        name = f"pkg{i}"
        (evals if is_eval_module(name, FRACTION, 0) else train).append(name)
    assert len(train) >= n_train and len(evals) >= n_eval
    return train[:n_train], evals[:n_eval]


SUMMARIES = [
    "Return the sum of the numbers in the iterable. Values are added left to right.",
    "Open the file at the given path and return a stream object for it.",
    "Parse the text into a tree of nodes, raising an error on bad input.",
]


def pydoc(module: str, qualname: str, kind: str, text: str, signature: str = "(x, y=1)") -> Document:
    return Document(
        id=f"pydocs:{module}:{qualname}" if qualname else f"pydocs:{module}",
        text=text,
        source="pydocs",
        meta={
            "package": "stdlib",
            "module": module,
            "qualname": qualname,
            "kind": kind,
            "signature": signature if kind != "module" else "",
            "path": f"/x/{module}.py",
            "lineno": 1,
        },
    )


def corpus() -> tuple[list[Document], list[str], list[str]]:
    train_mods, eval_mods = modules_on_both_sides()
    docs = []
    for m in train_mods + eval_mods:
        docs.append(
            pydoc(m, "", "module", f"Tools for working with {m} objects and files.\n\nMore text here.")
        )
        for j, s in enumerate(SUMMARIES):
            docs.append(
                pydoc(m, f"func{j}", "function", f"{s}\n\n    >>> func{j}(1)\n    2\n\nDetails follow here.")
            )
        docs.append(
            pydoc(m, "Thing", "class", "A thing with :func:`parts` and state.\nIt keeps them in order.")
        )
        docs.append(pydoc(m, "tiny", "function", "Hi."))  # summary too short: no pair
    docs.append(Document(id="web:1", text="A page with no module metadata.", source="web"))
    return docs, train_mods, eval_mods


def run(tmp_path, cfg: AlignDataConfig, docs: list[Document]):
    upstream = documents_stage(tmp_path, docs, stage="scrub")
    out = tmp_path / "out"
    out.mkdir()
    return align_data(cfg, {"scrub": upstream}, out, MetricLogger()), out


def test_pairs_split_by_module_with_rejected_answers(tmp_path):
    docs, train_mods, eval_mods = corpus()
    report, out = run(tmp_path, AlignDataConfig(eval_fraction=FRACTION), docs)
    sft = {s: read_jsonl(out / f"sft/{s}.jsonl") for s in ("train", "eval")}
    prefs = {s: read_jsonl(out / f"prefs/{s}.jsonl") for s in ("train", "eval")}

    assert {r["module"] for r in sft["train"]} == set(train_mods)
    assert {r["module"] for r in sft["eval"]} == set(eval_mods)
    assert {r["module"] for r in prefs["eval"]} <= set(eval_mods)
    # per module: 1 module doc + 3 functions + 1 class; the too-short docstring makes no pair
    assert len(sft["train"]) == 5 * len(train_mods) and len(sft["eval"]) == 5 * len(eval_mods)
    assert report.counts["skipped_no_summary"] == len(train_mods) + len(eval_mods)
    assert report.counts["modules_train"] == 3 and report.counts["modules_eval"] == 2
    assert report.counts["sft_eval"] == len(sft["eval"]) and report.counts["prefs_train"] == len(
        prefs["train"]
    )

    by_id = {r["id"]: r for r in sft["train"] + sft["eval"]}
    rec = by_id[f"pydocs:{train_mods[0]}:func0"]
    assert rec["prompt"] == [{"role": "user", "content": rec["prompt"][0]["content"]}]
    assert "func0(x, y=1)" in rec["prompt"][0]["content"] and train_mods[0] in rec["prompt"][0]["content"]
    assert rec["completion"] == [{"role": "assistant", "content": SUMMARIES[0]}]
    thing = by_id[f"pydocs:{train_mods[0]}:Thing"]
    assert thing["completion"][0]["content"] == "A thing with `parts` and state. It keeps them in order."
    assert "class Thing" in thing["prompt"][0]["content"]

    kinds = {"other_object", "truncated", "shuffled_sentences", "shuffled_words"}
    for p in prefs["train"] + prefs["eval"]:
        chosen, rejected = p["chosen"][0]["content"], p["rejected"][0]["content"]
        assert p["rejected_kind"] in kinds and rejected != chosen
        assert p["chosen"] == by_id[p["id"]]["completion"] and p["prompt"] == by_id[p["id"]]["prompt"]
        if p["rejected_kind"] == "other_object":  # another object's summary from the same module
            same_module = {
                r["completion"][0]["content"] for r in by_id.values() if r["module"] == p["module"]
            }
            assert rejected in same_module
    assert sum(v for k, v in report.counts.items() if k.startswith("rejected_")) == len(prefs["train"]) + len(
        prefs["eval"]
    )

    held_out = [json.loads(line) for line in (out / "eval_documents.jsonl").read_text().splitlines()]
    expected = {d.id for d in docs if d.meta.get("module") in eval_mods}
    assert {d["id"] for d in held_out} == expected and all(d["text"] for d in held_out)
    assert report.counts["eval_documents"] == len(expected)


def test_summary_takes_first_prose_paragraph_and_caps_at_sentences():
    assert (
        summary("S.find(sub[, start]) -> int\n\nReturn the lowest index.\nMore.", 200)
        == "Return the lowest index. More."
    )
    assert summary(">>> x()\n\nUse :class:`Foo` here.", 200) == "Use `Foo` here."
    text = "First sentence is here. Second one is longer than the cap allows for sure."
    assert summary(text, 30) == "First sentence is here."
    assert summary("Do the thing. For example:\n\n  x()", 200) == "Do the thing."
    assert summary("A single sentence much longer than the cap.", 10) is None


def test_damaged_answers_differ_and_are_deterministic():
    answer = "Return the sum of the numbers. Values are added left to right."
    cut = truncated(answer, random.Random(1))
    assert answer.startswith(cut) and len(cut.split()) < len(answer.split()) and not cut.endswith(".")
    text, kind = shuffled(answer, random.Random(1))
    assert kind == "shuffled_sentences" and text != answer
    assert sorted(split_sentences(text)) == sorted(split_sentences(answer))  # same sentences, new order
    assert shuffled("one two three four five", random.Random(0))[1] == "shuffled_words"
    assert truncated("too short", random.Random(0)) is None
    pool = [("a", answer), ("b", "Open the stream and read it.")]
    first = make_rejected("a", answer, pool, {"other_object": 1.0, "truncated": 0.0, "shuffled": 0.0}, seed=0)
    assert first == ("Open the stream and read it.", "other_object")
    assert make_rejected(
        "a", answer, pool, {"other_object": 1.0, "truncated": 1.0, "shuffled": 1.0}, 3
    ) == make_rejected("a", answer, pool, {"other_object": 1.0, "truncated": 1.0, "shuffled": 1.0}, 3)
    # no other object in the module: falls back to damaging the right answer
    alone = make_rejected("a", answer, pool[:1], {"other_object": 1.0, "truncated": 0.0, "shuffled": 1.0}, 0)
    assert alone is not None and alone[1] == "shuffled_sentences"


def test_only_truncated_rejections_when_weighted_so(tmp_path):
    docs, _, _ = corpus()
    cfg = AlignDataConfig(eval_fraction=FRACTION, rejected_weights={"truncated": 1.0, "other_object": 0.0})
    report, out = run(tmp_path, cfg, docs)
    kinds = {p["rejected_kind"] for s in ("train", "eval") for p in read_jsonl(out / f"prefs/{s}.jsonl")}
    assert kinds <= {"truncated"} and report.counts["rejected_truncated_train"] > 0


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_user_datasets_are_added_in_trl_formats(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs, _, _ = corpus()
    msgs = write_jsonl(
        tmp_path / "chat.jsonl",
        [
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": f"Q{i}"},
                    {"role": "assistant", "content": f"A{i}"},
                ]
            }
            for i in range(10)
        ],
    )
    pc = tmp_path / "pc.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": f"P{i}", "completion": f"C{i}"} for i in range(6)]), pc)
    prefs = write_jsonl(
        tmp_path / "prefs.jsonl",
        [
            {"prompt": "Q", "chosen": "good", "rejected": "bad"},
            {
                "chosen": [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "good2"}],
                "rejected": [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "bad2"}],
            },
        ],
    )
    cfg = AlignDataConfig(
        eval_fraction=FRACTION,
        sft_datasets=[
            DatasetSource(path=str(msgs), eval_fraction=0.5),
            DatasetSource(path=str(pc), eval_fraction=0.0),
        ],
        pref_datasets=[DatasetSource(path=str(prefs), label="mine", eval_fraction=0.0)],
    )
    report, out = run(tmp_path, cfg, docs)
    assert report.counts["user_sft_chat"] == 10 and report.counts["user_sft_pc"] == 6
    sft = read_jsonl(out / "sft/train.jsonl") + read_jsonl(out / "sft/eval.jsonl")
    chat = [r for r in sft if r["module"] == "user:chat"]
    assert len(chat) == 10 and 0 < sum(r in read_jsonl(out / "sft/eval.jsonl") for r in chat) < 10
    first = next(r for r in chat if r["id"] == "chat:0")
    assert [m["role"] for m in first["prompt"]] == ["system", "user"] and first["completion"][0][
        "content"
    ] == "A0"
    parquet_rows = [r for r in read_jsonl(out / "sft/train.jsonl") if r["module"] == "user:pc"]
    assert len(parquet_rows) == 6 and parquet_rows[0]["prompt"] == [{"role": "user", "content": "P0"}]
    mine = [r for r in read_jsonl(out / "prefs/train.jsonl") if r["module"] == "user:mine"]
    assert [r["chosen"][0]["content"] for r in mine] == ["good", "good2"]
    assert mine[1]["prompt"] == [{"role": "user", "content": "Q2"}] and mine[1]["rejected_kind"] == "user"


@pytest.mark.parametrize(
    "kind, row, message",
    [
        ("sft", {"prompt": "Q"}, "missing field 'completion'"),
        ("sft", {"text": "x"}, "missing field 'prompt'"),
        ("sft", {"messages": [{"role": "user", "content": "Q"}]}, "must end with an assistant message"),
        ("prefs", {"prompt": "Q", "chosen": "a"}, "missing field 'rejected'"),
        ("prefs", {"chosen": "a", "rejected": "b"}, "missing field 'prompt'"),
        ("prefs", {"prompt": 3, "chosen": "a", "rejected": "b"}, "field 'prompt' must be a string"),
    ],
)
def test_user_dataset_format_errors_name_file_row_and_field(tmp_path, kind, row, message):
    path = write_jsonl(tmp_path / "data.jsonl", [row])
    src = [DatasetSource(path=str(path))]
    cfg = AlignDataConfig(sft_datasets=src) if kind == "sft" else AlignDataConfig(pref_datasets=src)
    with pytest.raises(AlignDataError) as err:
        run(tmp_path, cfg, corpus()[0])
    assert str(path) in str(err.value) and "row 1" in str(err.value) and message in str(err.value)


def test_bad_json_and_missing_file_are_named(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Q", "completion": "A"}\n{oops\n')
    with pytest.raises(AlignDataError, match=rf"{bad}:2: not valid JSON"):
        run(tmp_path, AlignDataConfig(sft_datasets=[DatasetSource(path=str(bad))]), corpus()[0])
    with pytest.raises(AlignDataError, match="does not exist"):
        run(
            tmp_path / "b",
            AlignDataConfig(sft_datasets=[DatasetSource(path=str(tmp_path / "no.jsonl"))]),
            corpus()[0],
        )


def test_config_keys_cache_on_dataset_content_and_validates(tmp_path):
    from flows.stages import STAGES

    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Q", "completion": "A"}])
    pipeline = SimpleNamespace(align_data=AlignDataConfig(sft_datasets=[DatasetSource(path=str(path))]))
    before = STAGES["align_data"].keyed_config(pipeline)  # what keys the stage hash: config + file content
    write_jsonl(path, [{"prompt": "Q", "completion": "B"}])
    assert STAGES["align_data"].keyed_config(pipeline) != before
    with pytest.raises(ValidationError, match="rejected_weights"):
        AlignDataConfig(rejected_weights={"truncated": -1.0})
    with pytest.raises(ValidationError, match="no sft_datasets"):
        AlignDataConfig(builtin=False)


def test_empty_eval_split_is_an_error_naming_the_knob(tmp_path):
    train_mods, _ = modules_on_both_sides()
    docs = [pydoc(train_mods[0], "f", "function", SUMMARIES[0])]
    with pytest.raises(AlignDataError, match="eval_fraction"):
        run(tmp_path, AlignDataConfig(eval_fraction=FRACTION), docs)
