"""The dedup stage and `lmforge dedup`: exact and MinHash LSH near duplicates, keeper choice, reports."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from conf.dedup import DedupConfig
from tasks.common.data import Document, read_documents
from tasks.common.stage import StageSpec, check_gate
from tasks.common.tracking import MetricLogger
from tasks.dedup import core, dedup, gate
from tasks.dedup.core import Params, find_duplicates
from tests.helpers import documents_stage, seal
from tests.services import redis_server

VOCAB = [f"w{i}" for i in range(5000)]


def random_text(rng: random.Random, words: int = 200) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(words))


def edit(text: str, rng: random.Random, changes: int = 1) -> str:
    """A near duplicate: `changes` words replaced (1 change in 200 words: Jaccard of 5-grams ~0.95)."""
    words = text.split()
    for _ in range(changes):
        words[rng.randrange(len(words))] = "edited"
    return " ".join(words)


@pytest.fixture
def corpus() -> tuple[list[Document], dict[str, str]]:
    """30 distinct documents, 6 of them with a near-duplicate copy; returns the docs and dup -> original."""
    rng = random.Random(7)
    docs, planted = [], {}
    for i in range(30):
        text = random_text(rng)
        docs.append(Document(f"d{i:02d}", text, "test"))
        if i % 5 == 0:
            docs.append(Document(f"n{i:02d}", edit(text, rng), "test"))
            planted[f"n{i:02d}"] = f"d{i:02d}"
    return docs, planted


def run_stage(tmp_path, docs, **cfg):
    up = documents_stage(tmp_path, docs)
    out = tmp_path / "dedup"
    out.mkdir()
    report = dedup(DedupConfig(**cfg), {"filter": up}, out, MetricLogger())
    kept = [d.id for d in read_documents(seal(out, "dedup", counts=report.counts, metrics=report.metrics))]
    dups = [json.loads(line) for line in (out / "duplicates.jsonl").read_text().splitlines()]
    return report, kept, dups, json.loads((out / "dedup_report.json").read_text())


def test_near_duplicates_removed_distinct_kept(tmp_path, corpus):
    docs, planted = corpus
    report, kept, dups, rep = run_stage(tmp_path, docs)
    ids, texts = [d.id for d in docs], {d.id: d.text for d in docs}
    # one of each planted pair is removed; all 30 distinct texts stay, in input order
    assert len(kept) == 30 and kept == [i for i in ids if i in kept]
    pairs = {(d["id"], d["duplicate_of"]) for d in dups}
    for dup, orig in planted.items():
        assert (dup, orig) in pairs or (orig, dup) in pairs
    assert all(d["kind"] == "near" and 0.8 <= d["jaccard_estimate"] < 1 for d in dups)
    assert report.counts == {
        **report.counts,
        "documents_in": 36,
        "near_duplicates": 6,
        "exact_duplicates": 0,
        "documents": 30,
        "clusters": 6,
    }
    assert report.metrics["removed_share"] == pytest.approx(6 / 36)
    # the report: datasketch's bands x rows for 0.8/128 (weights 0.2/0.8), histogram, sample pairs
    assert (rep["lsh"]["bands"], rep["lsh"]["rows"]) == (12, 10)
    assert rep["cluster_sizes"] == {"2": 6}
    assert len(rep["sample_pairs"]) == 6
    for p in rep["sample_pairs"]:
        assert p["jaccard_true"] == round(core.true_jaccard(texts[p["id"]], texts[p["duplicate_of"]], 5), 4)
        assert p["text"] == texts[p["id"]][:300]
        assert abs(p["jaccard_estimate"] - p["jaccard_true"]) < 0.12 and p["jaccard_true"] > 0.9


def test_stage_logs_report_to_mlflow(tmp_path, corpus, mlflow_uri):
    """Through the real runner: the report and duplicates are artifacts of the stage's MLflow run."""
    from conf.schema import PipelineConfig
    from flows.stages import STAGES
    from tasks.common.stage import run_stage
    from tasks.common.tracking import Tracker

    docs, _ = corpus
    tracker = Tracker(mlflow_uri, "test-dedup")
    parent = tracker.start_pipeline("dedup-test", {}, {})
    up = documents_stage(tmp_path, docs)
    res = run_stage(
        STAGES["dedup"], PipelineConfig(), {"collect": up}, tmp_path / "art", tracker, parent.run_id
    )
    assert res.status == "ran" and res.manifest.counts["near_duplicates"] == 6
    assert {"dedup_report.json", "duplicates.jsonl", "dedup_sample_pairs.json"} <= {
        f.path for f in tracker.client.list_artifacts(res.run_id)
    }
    run = tracker.client.get_run(res.run_id)
    assert run.data.metrics["count/near_duplicates"] == 6 and run.data.metrics["lsh_rows"] == 10
    history = tracker.client.get_metric_history(res.run_id, "clusters_of_size")
    assert [(m.step, m.value) for m in history] == [(2, 6.0)]


def test_exact_duplicates_normalized(tmp_path):
    rng = random.Random(1)
    base = random_text(rng, 50)
    docs = [
        Document("a", base, "t"),
        Document("b", "  " + base.upper().replace(" ", "\n  "), "t"),  # same after normalization, longer
        Document("c", random_text(rng, 50), "t"),
        Document("d", base, "t"),
    ]
    report, kept, dups, _ = run_stage(tmp_path, docs)
    assert kept == ["b", "c"]  # the longest of the exact group is kept
    assert dups == [
        {"id": "a", "duplicate_of": "b", "kind": "exact", "jaccard_estimate": 1.0},
        {"id": "d", "duplicate_of": "b", "kind": "exact", "jaccard_estimate": 1.0},
    ]
    assert report.counts["exact_duplicates"] == 2 and report.counts["near_duplicates"] == 0
    # exact only, on raw text: the case variant is no longer a duplicate
    _, kept, dups, rep = run_stage(tmp_path / "raw", docs, normalize=False, near=False)
    assert kept == ["a", "b", "c"] and [d["id"] for d in dups] == ["d"]
    assert rep["lsh"]["bands"] == 0


def test_keeper_is_longest_then_lowest_id():
    rng = random.Random(3)
    text = random_text(rng, 200)
    longer = text + " tail"
    recs = [("z", text), ("y", longer), ("x", text), ("q", random_text(rng, 200))]
    res = find_duplicates(recs, Params())
    assert [res.ids[i] for i in np.flatnonzero(res.keep)] == ["y", "q"]  # longest wins although later
    assert [(res.ids[d.index], d.kind) for d in res.duplicates] == [("z", "near"), ("x", "near")]
    # equal lengths: lowest id; numbers compare as numbers (2 < 10), before strings
    words = text.split()
    words[100] = "z" * len(words[100])  # a near duplicate of the same length
    same = [(10, text), ("b", text.upper()), (2, text.title()), ("a", " ".join(words))]
    res = find_duplicates(same, Params())
    kept = [res.ids[i] for i in np.flatnonzero(res.keep)]
    assert kept == [2] and {d.kind for d in res.duplicates} == {"exact", "near"}
    assert all(res.ids[d.keeper] == 2 for d in res.duplicates)
    # the same records in another order keep the same record
    res2 = find_duplicates(list(reversed(same)), Params())
    assert [res2.ids[i] for i in np.flatnonzero(res2.keep)] == [2]


def test_same_result_with_one_and_two_workers(corpus):
    docs, _ = corpus
    recs = [(d.id, d.text) for d in docs]
    one = find_duplicates(recs, Params(workers=1, batch_size=7))
    two = find_duplicates(recs, Params(workers=2, batch_size=7))
    assert one.keep.tolist() == two.keep.tolist()
    assert [vars(d) for d in one.duplicates] == [vars(d) for d in two.duplicates]
    assert one.cluster_sizes == two.cluster_sizes and one.count("near") == 6


def test_shards_signed_apart_cluster_like_one_pass(corpus):
    """The cluster engine signs each shard on its own; clustering the parts must decide exactly as one pass,
    with exact and near duplicates split across shards and a key repeated inside one shard."""
    docs, _ = corpus
    rng = random.Random(3)
    recs = [(d.id, d.text) for d in docs]
    recs += [("x1", docs[3].text.upper()), ("x2", docs[3].text), ("x3", docs[10].text)]
    rng.shuffle(recs)
    p = Params(batch_size=5)
    whole = find_duplicates(recs, p)
    shards = [recs[0:9], recs[9:10], recs[10:25], recs[25:]]
    parts = core.cluster([core.sign(shard, p) for shard in shards], p)
    assert parts.ids == whole.ids and parts.keep.tolist() == whole.keep.tolist()
    assert [vars(d) for d in parts.duplicates] == [vars(d) for d in whole.duplicates]
    assert parts.cluster_sizes == whole.cluster_sizes and (parts.bands, parts.rows) == (
        whole.bands,
        whole.rows,
    )
    assert whole.count("exact") == 3 and whole.count("near") == 6


def test_signatures_match_datasketch():
    """The batched signatures are exactly datasketch's MinHash of the same shingles, across chunk edges."""
    import xxhash
    from datasketch import MinHash

    rng = random.Random(2)
    texts = [random_text(rng, rng.choice([0, 3, 40, 300])) for _ in range(60)]
    texts += [random_text(rng, 2 * core._ROWS + 17), "", random_text(rng, 50)]  # one text over the chunk size
    texts = [core.normalize(t) for t in texts]
    sigs, counts = core.signature_batch(texts, 5, 64, 1)
    bulk = MinHash.bulk(
        [core.shingles(t, 5) for t in texts], num_perm=64, seed=1, hashfunc=xxhash.xxh32_intdigest
    )
    assert np.array_equal(sigs, np.stack([m.hashvalues for m in bulk]))
    assert counts.tolist() == [len(core.shingles(t, 5)) for t in texts] and counts[-2] == 0
    for text, sig in list(zip(texts, sigs, strict=True))[:5]:  # and per-shingle update, the plain way
        m = MinHash(num_perm=64, seed=1, hashfunc=xxhash.xxh32_intdigest)
        for sh in core.shingles(text, 5):
            m.update(sh)
        assert np.array_equal(m.hashvalues, sig)


def test_empty_and_short_texts():
    recs = [
        (1, ""),
        (2, "   "),
        (3, "hello world"),
        (4, "Hello  world!"),
        (5, "hello there"),
        (6, "!!!"),
        (7, "one two three four"),
    ]
    res = find_duplicates(recs, Params(ngram=5))
    kept = [res.ids[i] for i in np.flatnonzero(res.keep)]
    # "" and "   " are exact duplicates; "hello world" vs "Hello  world!" share their one shingle (near, 1.0);
    # texts without words ("", "!!!") never match other texts through the LSH
    assert kept == [2, 4, 5, 6, 7]
    by_id = {res.ids[d.index]: (res.ids[d.keeper], d.kind, d.jaccard_estimate) for d in res.duplicates}
    assert by_id == {1: (2, "exact", 1.0), 3: (4, "near", 1.0)}
    assert core.shingles("a b", 5) == [b"a b"] and core.shingles("", 5) == []
    assert find_duplicates([], Params()).total == 0


def test_gate_and_config_errors(tmp_path):
    rng = random.Random(5)
    text = random_text(rng, 30)
    report, *_ = run_stage(tmp_path, [Document(f"d{i}", text, "t") for i in range(3)])
    m = seal(tmp_path / "dedup", "dedup", counts=report.counts, metrics=report.metrics)
    assert report.metrics["removed_share"] == pytest.approx(2 / 3)
    assert "more than dedup.max_removed_share=0.5" in gate(DedupConfig(), m)
    with pytest.raises(Exception, match="max_removed_share=0.5"):
        check_gate(StageSpec("dedup", dedup, ("filter",), gate=gate), DedupConfig(), m)
    assert gate(DedupConfig(max_removed_share=0.7), m) is None
    with pytest.raises(ValueError, match="single band.*lower threshold or raise num_perm"):
        DedupConfig(threshold=0.97, num_perm=16)
    with pytest.raises(ValueError, match="lsh_storage"):
        DedupConfig(lsh_storage={"type": "memcached"})
    cfg = DedupConfig(lsh_storage={"type": "redis", "port": 7000, "basename": "x"})
    assert cfg.lsh_storage.storage_config() == {
        "type": "redis",
        "basename": b"x",
        "redis": {"host": "localhost", "port": 7000, "db": 0},
    }
    assert cfg.result_fields() == DedupConfig().result_fields()  # storage and workers don't change results


def test_redis_password_comes_from_the_environment_only(monkeypatch):
    cfg = DedupConfig(lsh_storage={"type": "redis", "password_env": "TEST_REDIS_PW"})
    monkeypatch.setenv("TEST_REDIS_PW", "s3cret-from-env")
    assert Params.from_config(cfg).storage_config["redis"]["password"] == "s3cret-from-env"
    assert "s3cret-from-env" not in json.dumps(cfg.model_dump(mode="json"))  # what MLflow logs
    from conf.loader import ConfigError, load_config

    with pytest.raises(
        ConfigError, match="password_env"
    ):  # a password in the config is refused, naming the way
        load_config("smoke", overrides=["dedup.lsh_storage.type=redis", "dedup.lsh_storage.password=inline"])


# ---- the standalone CLI -------------------------------------------------------------------------------


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))


def test_cli_keeps_fields_and_order_and_writes_dups(tmp_path):
    from flows.cli import main

    rng = random.Random(11)
    a, b, c = (random_text(rng, 120) for _ in range(3))
    records = [
        {"id": "A", "body": a, "meta": {"k": [1, 2]}},
        {"body": edit(a, rng).replace("edited", "x"), "n": 2},  # no id: known as line 2; shorter -> removed
        "",  # a blank line still counts for line numbers
        {"body": b, "n": 4},  # id 4
        {"id": "C", "body": c, "extra": None},
        {"body": b.upper()},  # exact duplicate of line 4, no id: 6
        {"id": 7, "body": c + " and more"},  # near duplicate of C, longer: C is removed
    ]
    src, out = tmp_path / "in.jsonl", tmp_path / "sub" / "out.jsonl"
    write_jsonl(src, records)
    assert main(["dedup", str(src), str(out), "--text-field", "body", "--threshold", "0.7"]) == 0
    lines = src.read_text().splitlines()
    assert out.read_text().splitlines() == [lines[0], lines[3], lines[6]]  # input lines verbatim, in order
    dups = [json.loads(x) for x in (tmp_path / "sub" / "out.dups.jsonl").read_text().splitlines()]
    assert [(d["id"], d["duplicate_of"]) for d in dups] == [(2, "A"), ("C", 7), (6, 4)]
    assert set(dups[0]) == {"id", "duplicate_of", "jaccard_estimate"}
    assert dups[2]["jaccard_estimate"] == 1.0 and 0.7 <= dups[0]["jaccard_estimate"] < 1
    assert not list(tmp_path.glob("sub/*.tmp"))


def test_cli_errors_name_the_line(tmp_path, capsys):
    from flows.cli import main

    src = tmp_path / "in.jsonl"
    write_jsonl(src, [{"text": "fine"}, "{not json", {"text": "x"}])
    assert main(["dedup", str(src), str(tmp_path / "o.jsonl")]) == 1
    assert f"{src}:2: not valid JSON" in capsys.readouterr().err
    write_jsonl(src, [{"text": "fine"}, {"body": "x"}])
    assert main(["dedup", str(src), str(tmp_path / "o.jsonl")]) == 1
    assert f"{src}:2: no 'text' field" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "o.dups.jsonl").exists()
    assert main(["dedup", str(src), str(src)]) == 2
    assert (
        main(["dedup", str(src), str(tmp_path / "o.jsonl"), "--threshold", "0.97", "--num-perm", "16"]) == 2
    )
    assert "lower threshold or raise num_perm" in capsys.readouterr().err


# ---- LSH in Redis (a real redis-server; apt-installed as root on Debian, as in CI) -------------------


@pytest.fixture
def redis_port(tmp_path):
    with redis_server(tmp_path) as port:
        yield port


def test_redis_storage_gives_the_same_result(corpus, redis_port):
    import redis

    docs, _ = corpus
    recs = [(d.id, d.text) for d in docs]
    lsh_storage = {"type": "redis", "host": "127.0.0.1", "port": redis_port}
    storage = DedupConfig(lsh_storage=lsh_storage).lsh_storage.storage_config()
    in_redis = find_duplicates(recs, Params(storage_config=storage))
    in_memory = find_duplicates(recs, Params())
    assert in_redis.keep.tolist() == in_memory.keep.tolist()
    assert [vars(d) for d in in_redis.duplicates] == [vars(d) for d in in_memory.duplicates]
    # the index's keys are removed afterwards
    assert redis.Redis(host="127.0.0.1", port=redis_port).dbsize() == 0


def test_redis_with_a_password_from_the_environment(corpus, tmp_path, monkeypatch):
    docs, _ = corpus
    recs = [(d.id, d.text) for d in docs]
    with redis_server(tmp_path, password="pw-from-env") as port:
        cfg = DedupConfig(
            lsh_storage={"type": "redis", "host": "127.0.0.1", "port": port, "password_env": "TEST_PW"}
        )
        monkeypatch.setenv("TEST_PW", "wrong")
        up = documents_stage(tmp_path, docs)
        with pytest.raises(
            RuntimeError, match=rf"Redis at 127.0.0.1:{port} db 0 \(password from \$TEST_PW: set\)"
        ):
            dedup(cfg, {"filter": up}, tmp_path / "out", MetricLogger())
        monkeypatch.setenv("TEST_PW", "pw-from-env")
        in_redis = find_duplicates(recs, Params.from_config(cfg))
    assert in_redis.keep.tolist() == find_duplicates(recs, Params()).keep.tolist()
