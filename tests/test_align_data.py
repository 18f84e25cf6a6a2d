"""align_data: pairs from pydocs-like documents, split by top-level package into roles, rejected answers
that form cues cannot tell apart, user datasets."""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
from pydantic import ValidationError

from conf.align_data import AlignDataConfig, DatasetSource
from tasks.align_data import (
    AlignDataError,
    align_data,
    assign_roles,
    generic,
    shuffled,
    split_sentences,
    summary,
    truncated,
)
from tasks.common.alignment import (
    GENERIC_ANSWERS,
    PPO_PROMPTS,
    PREF_FILES,
    REJECTED_KINDS,
    SFT_FILES,
    top_package,
)
from tasks.common.data import Document
from tasks.common.jsonl import read_jsonl
from tasks.common.tracking import MetricLogger
from tests.helpers import documents_stage

SUMMARIES = [
    "Return the sum of the numbers in the iterable. Values are added left to right.",
    "Open the file at the given path and return a stream object for it.",
    "Parse the text into a tree of nodes, raising an error on bad input.",
    "Close every handler of the logger and release the locks it holds while it is shutting down.",
    "Format the record as text.",
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


def corpus(n_packages: int = 16) -> list[Document]:
    """Packages `pkgN` with a submodule each; every module has a module docstring, five functions, a
    class and one docstring too short to make a pair."""
    docs = []
    for i in range(n_packages):
        for m in (f"pkg{i}", f"pkg{i}.sub"):
            docs.append(pydoc(m, "", "module", f"Tools for working with {m} objects and files.\n\nMore."))
            for j, s in enumerate(SUMMARIES):
                text = f"{s} See {m}.\n\n    >>> func{j}(1)\n    2\n\nDetails follow here."
                docs.append(pydoc(m, f"func{j}", "function", text))
            docs.append(
                pydoc(m, "Thing", "class", f"A thing with :func:`parts` and {m} state.\nIt keeps them.")
            )
            docs.append(pydoc(m, "tiny", "function", "Hi."))  # summary too short: no pair
    docs.append(Document(id="web:1", text="A page with no module metadata.", source="web"))
    return docs


def run(tmp_path, cfg: AlignDataConfig, docs: list[Document]):
    upstream = documents_stage(tmp_path, docs, stage="scrub")
    out = tmp_path / "out"
    out.mkdir()
    return align_data(cfg, {"scrub": upstream}, out, MetricLogger()), out


def read_files(out) -> dict[str, list[dict]]:
    names = {"sft_train": SFT_FILES["train"], "sft_eval": SFT_FILES["eval"], "ppo": PPO_PROMPTS}
    names.update({f"prefs_{k}": v for k, v in PREF_FILES.items()})
    return {k: read_jsonl(out / v) for k, v in names.items()}


def packages(rows: list[dict]) -> set[str]:
    return {top_package(r["module"]) for r in rows}


def test_pairs_split_by_top_level_package_into_disjoint_roles(tmp_path):
    docs = corpus()
    report, out = run(tmp_path, AlignDataConfig(eval_fraction=0.25), docs)
    f = read_files(out)
    roles = {
        "eval": packages(f["sft_eval"]),
        "rm": packages(f["prefs_train"]),
        "judge": packages(f["prefs_judge"]),
        "ppo": packages(f["ppo"]),
    }
    assert all(roles.values()), roles
    for a in roles:
        for b in roles:
            assert a == b or not roles[a] & roles[b], (a, b)  # no package in two roles
    assert packages(f["prefs_eval"]) == roles["eval"]
    assert packages(f["sft_train"]) == roles["rm"] | roles["judge"] | roles["ppo"]
    # per module: 1 module doc + 5 functions + 1 class; the too-short docstring makes no pair
    assert len(f["sft_train"]) + len(f["sft_eval"]) == 16 * 2 * 7
    assert report.counts["skipped_no_summary"] == 32
    assert report.counts["prompts_eval"] == len(f["sft_eval"]) and report.counts["ppo_prompts"] == len(
        f["ppo"]
    )
    assert report.counts["packages_eval"] == len(roles["eval"]) and report.counts["prefs_judge"] > 0

    sft = {r["id"]: r for r in f["sft_train"] + f["sft_eval"]}
    assert {r["id"] for r in f["ppo"]} <= set(sft) and all(r == sft[r["id"]] for r in f["ppo"])
    rec = sft["pydocs:pkg0:func0"]
    assert rec["prompt"] == [{"role": "user", "content": rec["prompt"][0]["content"]}]
    assert "func0(x, y=1)" in rec["prompt"][0]["content"] and "pkg0" in rec["prompt"][0]["content"]
    assert rec["completion"] == [{"role": "assistant", "content": f"{SUMMARIES[0]} See pkg0."}]
    thing = sft["pydocs:pkg0:Thing"]
    assert thing["completion"][0]["content"] == "A thing with `parts` and pkg0 state. It keeps them."

    for name in ("prefs_train", "prefs_judge", "prefs_eval"):
        for p in f[name]:
            assert p["rejected_kind"] in REJECTED_KINDS and p["rejected"] != p["chosen"]
            assert p["chosen"] == sft[p["id"]]["completion"] and p["prompt"] == sft[p["id"]]["prompt"]
    # rm/judge: two rejected answers of different kinds per prompt; eval: one of every kind
    per_prompt = Counter(p["id"] for p in f["prefs_train"])
    assert set(per_prompt.values()) == {2}
    assert all(len({p["rejected_kind"] for p in f["prefs_train"] if p["id"] == i}) == 2 for i in per_prompt)
    eval_kinds = Counter(p["id"] for p in f["prefs_eval"])
    assert max(eval_kinds.values()) == 4 and report.counts["prefs_eval"] == len(f["prefs_eval"])
    # the other objects' answers come from the same role (no eval answer leaks into training pairs)
    answers = {n: {r["chosen"][0]["content"] for r in f[n]} for n in ("prefs_train", "prefs_eval")}
    for p in f["prefs_train"]:
        if p["rejected_kind"] == "other_object":
            assert p["rejected"][0]["content"] not in answers["prefs_eval"]

    held_out = read_jsonl(out / "eval_documents.jsonl")
    expected = {d.id for d in docs if d.meta.get("module") and top_package(d.meta["module"]) in roles["eval"]}
    assert {d["id"] for d in held_out} == expected and report.counts["eval_documents"] == len(expected)


def test_kinds_are_balanced_and_weights_respected(tmp_path):
    report, out = run(tmp_path, AlignDataConfig(eval_fraction=0.25), corpus(24))
    kinds = Counter(p["rejected_kind"] for p in read_jsonl(out / PREF_FILES["train"]))
    assert set(kinds) == {"other_object", "truncated", "shuffled", "generic"}
    assert max(kinds.values()) - min(kinds.values()) <= 2, kinds
    assert all(report.counts[f"rejected_{k}_train"] == n for k, n in kinds.items())

    cfg = AlignDataConfig(eval_fraction=0.25, rejected_weights={"truncated": 1.0, "generic": 1.0})
    report, out = run(tmp_path / "b", cfg, corpus(24))
    kinds = {p["rejected_kind"] for n in ("train", "judge", "eval") for p in read_jsonl(out / PREF_FILES[n])}
    assert kinds == {"truncated", "generic"}


def test_role_shares_follow_the_config():
    counts = {f"p{i}": 10 for i in range(200)}
    cfg = AlignDataConfig(eval_fraction=0.2, role_shares={"rm": 0.5, "judge": 0.25, "ppo": 0.25})
    roles = assign_roles(counts, cfg)
    share = Counter(roles.values())
    assert share["eval"] == pytest.approx(40, abs=2) and share["rm"] == pytest.approx(80, abs=2)
    assert share["judge"] == pytest.approx(40, abs=2) and share["ppo"] == pytest.approx(40, abs=2)
    assert assign_roles(counts, cfg) == roles  # deterministic
    other = assign_roles(counts, AlignDataConfig(eval_fraction=0.2, seed=1))
    assert other != roles


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


def test_damaged_answers_keep_the_form_of_the_answer():
    answer = "Return the sum of the `numbers` in the iterable, left to right."
    for seed in range(20):
        cut = truncated(answer, random.Random(seed))
        assert cut.endswith(".") and cut[0] == "R" and len(cut) < len(answer)
        assert answer.startswith(cut[:-1]) and cut.count("`") % 2 == 0  # never cut inside `code`
        words = shuffled(answer, random.Random(seed))
        assert words != answer and words.endswith(".") and words[0].isupper()
        assert sorted(words.rstrip(".").lower().split()) == sorted(answer.rstrip(".").lower().split())
    assert truncated("Too short to cut.", random.Random(0)) is None
    two = "Return the sum of the numbers. Values are added left to right."
    text = shuffled(two, random.Random(1))
    assert sorted(split_sentences(text)) == sorted(split_sentences(two)) and text != two
    assert shuffled("Stop now.", random.Random(0)) is None
    # generic answers: stock answers only, about the target length, with the answer's sentence count
    for target in (20, 60, 120, 200):
        g = generic("One sentence here.", target, random.Random(0))
        assert abs(math.log(len(g) / target)) < math.log(1.3) and len(split_sentences(g)) == 1
        assert all(
            part.strip(" .;").lower() in {a.rstrip(".").lower() for a in GENERIC_ANSWERS}
            for part in re.split(r"; |\. ", g)
        )
    g = generic("First sentence here. Second sentence here.", 80, random.Random(0))
    assert len(split_sentences(g)) == 2
    assert not generic("Ends without a period", 30, random.Random(0)).endswith(".")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_user_datasets_are_added_in_trl_formats(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = corpus(4)
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
        eval_fraction=0.25,
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
    parquet_rows = {r["id"]: r for r in read_jsonl(out / "sft/train.jsonl") if r["module"] == "user:pc"}
    assert len(parquet_rows) == 6 and parquet_rows["pc:0"]["prompt"] == [{"role": "user", "content": "P0"}]
    mine = sorted(
        (r for r in read_jsonl(out / "prefs/train.jsonl") if r["module"] == "user:mine"),
        key=lambda r: r["id"],
    )
    assert [r["chosen"][0]["content"] for r in mine] == ["good", "good2"]
    assert mine[1]["prompt"] == [{"role": "user", "content": "Q2"}] and mine[1]["rejected_kind"] == "user"


def test_user_data_only_gives_the_judge_a_disjoint_share_and_ppo_the_sft_prompts(tmp_path):
    prefs = write_jsonl(
        tmp_path / "prefs.jsonl",
        [{"prompt": f"Q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(60)],
    )
    chat = write_jsonl(
        tmp_path / "chat.jsonl", [{"prompt": f"P{i}", "completion": f"C{i}"} for i in range(20)]
    )
    cfg = AlignDataConfig(
        builtin=False,
        eval_fraction=0.2,
        pref_datasets=[DatasetSource(path=str(prefs))],
        sft_datasets=[DatasetSource(path=str(chat))],
    )
    report, out = run(tmp_path, cfg, corpus(2))
    f = read_files(out)
    rm, judge = {r["id"] for r in f["prefs_train"]}, {r["id"] for r in f["prefs_judge"]}
    assert rm and judge and not rm & judge and not (rm | judge) & {r["id"] for r in f["prefs_eval"]}
    assert len(rm) + len(judge) + len(f["prefs_eval"]) == 60
    assert 0.15 < len(judge) / (len(rm) + len(judge)) < 0.5  # judge / (rm + judge) = 1/3
    assert f["ppo"] == f["sft_train"] and report.counts["ppo_prompts"] == len(f["sft_train"]) > 0


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
        run(tmp_path, cfg, corpus(4))
    assert str(path) in str(err.value) and "row 1" in str(err.value) and message in str(err.value)


def test_bad_json_and_missing_file_are_named(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Q", "completion": "A"}\n{oops\n')
    with pytest.raises(AlignDataError, match=rf"{bad}:2: not valid JSON"):
        run(tmp_path, AlignDataConfig(sft_datasets=[DatasetSource(path=str(bad))]), corpus(4))
    with pytest.raises(AlignDataError, match="does not exist"):
        run(
            tmp_path / "b",
            AlignDataConfig(sft_datasets=[DatasetSource(path=str(tmp_path / "no.jsonl"))]),
            corpus(4),
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
    with pytest.raises(ValidationError, match="role_shares"):
        AlignDataConfig(role_shares={"rm": 0.0, "judge": 1.0})
    assert not AlignDataConfig(builtin=False).has_sources  # valid: pretraining needs no alignment data


def test_no_alignment_data_writes_empty_files_and_a_note(tmp_path):
    plain = [Document(f"d{i}", "Some web text without any module. " * 5, "files") for i in range(5)]
    report, out = run(tmp_path, AlignDataConfig(), plain)  # builtin on, but no pydocs documents
    f = read_files(out)
    assert not any(f.values()) and report.counts["sft_train"] == report.counts["eval_documents"] == 0
    assert (
        "align_data.sft_datasets" in report.extra["note"]
        and "align_data.pref_datasets" in report.extra["note"]
    )


def test_user_eval_rows_are_eval_documents_and_weights_mix(tmp_path):
    prefs = write_jsonl(
        tmp_path / "prefs.jsonl",
        [
            {"prompt": f"Question {i}?", "chosen": f"Good answer {i}.", "rejected": f"Bad {i}."}
            for i in range(40)
        ],
    )
    chat = write_jsonl(
        tmp_path / "chat.jsonl", [{"prompt": f"P{i}", "completion": f"C{i}"} for i in range(40)]
    )
    base = dict(builtin=False, eval_fraction=0.25, pref_datasets=[DatasetSource(path=str(prefs))])
    cfg = AlignDataConfig(**base, sft_datasets=[DatasetSource(path=str(chat), weight=2.5)])
    report, out = run(tmp_path, cfg, corpus(2))
    f = read_files(out)
    held = read_jsonl(out / "eval_documents.jsonl")
    assert len(held) == len(f["sft_eval"]) + len(f["prefs_eval"]) == report.counts["eval_documents_user"] > 0
    by_id = {r["id"]: r["text"] for r in held}
    row = f["prefs_eval"][0]
    assert by_id[row["id"]] == "\n".join(
        [row["prompt"][0]["content"], row["chosen"][0]["content"], row["rejected"][0]["content"]]
    )
    train_ids = [r["id"] for r in f["sft_train"]]
    originals = {i.split("~")[0] for i in train_ids}
    assert len(originals) == 40 - len(f["sft_eval"])  # every training row at least twice
    assert 2.1 < len(train_ids) / len(originals) < 2.9 and all(f"{i}~1" in train_ids for i in originals)
    # no SFT rows and no built-in PPO prompts: a seeded share of the preference rows become PPO prompts
    report, out = run(tmp_path / "b", AlignDataConfig(**base), corpus(2))
    f = read_files(out)
    rm, judge, ppo = ({r["id"] for r in f[k]} for k in ("prefs_train", "prefs_judge", "ppo"))
    assert rm and judge and ppo and not (rm & judge or rm & ppo or judge & ppo)
    assert len(rm) + len(judge) + len(ppo) + len(f["prefs_eval"]) == 40
    first = f["ppo"][0]
    assert first["completion"][0]["content"].startswith("Good answer")


def test_empty_eval_split_is_an_error_naming_the_knob(tmp_path):
    docs = [pydoc("pkg0", "f", "function", SUMMARIES[0])]  # one package: all of it goes to one role
    with pytest.raises(AlignDataError, match="eval_fraction"):
        run(tmp_path, AlignDataConfig(eval_fraction=0.25), docs)


# ---------------------------------------------------------------------------------------------
# form cues on the built-in corpus


@pytest.fixture(scope="module")
def stdlib_pairs(tmp_path_factory):
    """align_data on the tiny preset's corpus (every stdlib docstring of >= 200 chars), default config."""
    from conf.collect import PydocsSource
    from tasks.collect import pydocs_documents
    from tasks.sources import SourceStats

    stats = SourceStats(label="pydocs", on_error="skip", rejects_sink=None)
    docs = list(pydocs_documents(PydocsSource(packages=["stdlib"], min_chars=200), stats))
    report, out = run(tmp_path_factory.mktemp("stdlib"), AlignDataConfig(), docs)
    return report, read_files(out)


def form(text: str) -> list[float]:
    """What a reader sees without reading: length in characters and words, final punctuation, leading
    capital, number of sentences."""
    return [
        math.log(len(text) + 1),
        math.log(len(text.split()) + 1),
        float(text.endswith(".")),
        float(text[-1:] in ".!?"),
        float(text[:1].isupper()),
        float(len(split_sentences(text))),
    ]


def form_features(rows: list[dict], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each pair in a random order, (features of A, of B, their difference) -> 1 if A is the chosen one."""
    rng = random.Random(seed)
    x, y = [], []
    for r in rows:
        chosen, rejected = r["chosen"][-1]["content"], r["rejected"][-1]["content"]
        first = rng.random() < 0.5
        a, b = np.array(form(chosen if first else rejected)), np.array(form(rejected if first else chosen))
        x.append(np.concatenate([a, b, a - b]))
        y.append(float(first))
    return np.array(x), np.array(y)


def logistic_regression(x: np.ndarray, y: np.ndarray, steps: int = 2000, lr: float = 0.5):
    """Plain gradient descent on the log loss (standardised features); returns a predict function."""
    mu, sd = x.mean(0), x.std(0) + 1e-9
    z = np.hstack([(x - mu) / sd, np.ones((len(x), 1))])
    w = np.zeros(z.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-z @ w))
        w -= lr * (z.T @ (p - y) / len(y) + 1e-3 * w)
    return lambda q: (np.hstack([(q - mu) / sd, np.ones((len(q), 1))]) @ w > 0).astype(float)


def decision_tree(x: np.ndarray, y: np.ndarray, depth: int = 3, min_leaf: int = 20):
    """A CART tree (Gini, thresholds at feature quantiles); returns a predict function."""
    if depth == 0 or len(y) < 2 * min_leaf or y.min() == y.max():
        label = float(y.mean() >= 0.5)
        return lambda q: np.full(len(q), label)
    best = None
    for j in range(x.shape[1]):
        for t in np.unique(np.quantile(x[:, j], np.linspace(0.05, 0.95, 19))):
            left = x[:, j] <= t
            n_left = left.sum()
            if min(n_left, len(y) - n_left) < min_leaf:
                continue
            gini = sum(s.sum() * (1 - (y[s].mean() ** 2 + (1 - y[s].mean()) ** 2)) for s in (left, ~left))
            if best is None or gini < best[0]:
                best = (gini, j, t)
    if best is None:
        return decision_tree(x, y, 0)
    _, j, t = best
    left = x[:, j] <= t
    lo, hi = decision_tree(x[left], y[left], depth - 1), decision_tree(x[~left], y[~left], depth - 1)
    return lambda q: np.where(q[:, j] <= t, lo(q), hi(q))


def test_form_alone_does_not_tell_chosen_from_rejected(stdlib_pairs):
    """A classifier trained on the reward model's pairs from form features alone (length, punctuation,
    capital, sentences) is near chance on the held-out pairs; the same classifier does separate the
    pairs once truncations lose their final period (as they did before issue 13)."""
    _, f = stdlib_pairs
    x, y = form_features(f["prefs_train"], 0)
    xe, ye = form_features(f["prefs_eval"], 1)
    for fit in (logistic_regression, decision_tree):
        accuracy = float((fit(x, y)(xe) == ye).mean())
        assert accuracy <= 0.6, (fit.__name__, accuracy)

    def unpunctuated(rows: list[dict]) -> list[dict]:
        return [
            {**r, "rejected": [{"role": "assistant", "content": r["rejected"][0]["content"].rstrip(".")}]}
            if r["rejected_kind"] == "truncated"
            else r
            for r in rows
        ]

    x, y = form_features(unpunctuated(f["prefs_train"]), 0)
    xe, ye = form_features(unpunctuated(f["prefs_eval"]), 1)
    assert float((decision_tree(x, y)(xe) == ye).mean()) > 0.6


def test_builtin_roles_are_disjoint_and_sized(stdlib_pairs):
    """No eval package in any training role; the judge's pairs share no id and no package with the
    reward model's; PPO prompts are neither; kinds are balanced; the eval split has >= 200 prompts."""
    report, f = stdlib_pairs
    eval_pk = packages(f["sft_eval"])
    training = {"rm": f["prefs_train"], "judge": f["prefs_judge"], "ppo": f["ppo"], "sft": f["sft_train"]}
    for name, rows in training.items():
        assert not packages(rows) & eval_pk, name
    ids = {name: {r["id"] for r in rows} for name, rows in training.items()}
    assert not ids["rm"] & ids["judge"] and not (ids["rm"] | ids["judge"]) & ids["ppo"]
    assert not packages(f["prefs_train"]) & packages(f["prefs_judge"])
    assert (
        len(f["sft_eval"]) >= 200 and report.counts["prompts_rm"] > 2 * report.counts["prompts_judge"] * 0.6
    )
    for name in ("prefs_train", "prefs_judge"):
        kinds = Counter(r["rejected_kind"] for r in f[name])
        assert len(kinds) == 4 and max(kinds.values()) - min(kinds.values()) <= 2, (name, kinds)
    assert (
        0.4 <= report.metrics["rejected_longer_share"] / (1 - kinds["shuffled"] / sum(kinds.values())) <= 0.6
    )
