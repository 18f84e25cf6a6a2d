"""Bring your own data (`conf/presets/byo.yaml`): a local corpus of plain documents plus local SFT and
preference files in trl's formats, nothing built in, under a real Prefect server and MLflow store.

The data: stdlib docstrings written as a plain JSONL corpus (no module metadata, so the built-in pairs
cannot use it), and questions about them with their summaries as answers, as SFT rows (`messages` and
`prompt`/`completion`) and preference rows (`prompt`/`chosen`/`rejected`, the rejected answer damaged).
The corpus holds the answers' text, so decontamination against the held-out rows has work to do.
"""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from pathlib import Path

import pytest
import yaml

from conf.align_data import AlignDataConfig
from conf.collect import PydocsSource
from conf.loader import PRESETS_DIR, load_config
from flows.runner import run_pipeline
from tasks.align_data import builtin_pairs, shuffled, truncated
from tasks.collect import SourceStats, pydocs_documents
from tasks.common.jsonl import read_jsonl
from tasks.common.stage import PrecheckError

N_DOCS = 500
# The pretraining part in seconds: a few steps of one process.
QUICK = [
    "pretrain.max_steps=6",
    "pretrain.warmup_steps=1",
    "pretrain.eval_interval=3",
    "pretrain.checkpoint_interval=6",
    "pretrain.nproc_per_node=1",
]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A working directory holding the files where the byo preset looks for them (data/byo/...)."""
    root = tmp_path_factory.mktemp("byo")
    docs = list(itertools.islice(pydocs_documents(PydocsSource(packages=["stdlib"]), SourceStats()), N_DOCS))
    write_jsonl(
        root / "data/byo/corpus/part-0.jsonl",
        [{"id": f"web-{i}", "text": d.text} for i, d in enumerate(docs)],
    )
    pairs = builtin_pairs(AlignDataConfig(), docs, Counter())
    rng = random.Random(0)
    sft = []
    for i, p in enumerate(pairs):
        if i % 2:
            sft.append({"prompt": p.prompt, "completion": p.answer})
        else:
            sft.append(
                {
                    "messages": [
                        {"role": "user", "content": p.prompt},
                        {"role": "assistant", "content": p.answer},
                    ]
                }
            )
    prefs = []
    for i, p in enumerate(pairs):
        other = pairs[(i + 7) % len(pairs)].answer
        bad = truncated(p.answer, rng) or shuffled(p.answer, rng) or other
        prefs.append({"prompt": p.prompt, "chosen": p.answer, "rejected": bad})
    write_jsonl(root / "data/byo/sft.jsonl", sft)
    write_jsonl(root / "data/byo/prefs.jsonl", prefs)
    return root


def byo_config(workdir: Path, mlflow_uri: str, name: str, *overrides: str):
    """The byo preset at the smoke preset's sizes (its own sections, not its corpus)."""
    smoke = yaml.safe_load((PRESETS_DIR / "smoke.yaml").read_text())
    sizes = {k: v for k, v in smoke.items() if k not in ("extends", "name", "collect")}
    path = workdir / "smoke-sizes.yaml"
    path.write_text(yaml.safe_dump(sizes))
    return load_config(
        "byo",
        config_file=path,
        overrides=[
            f"artifacts_root={workdir / 'artifacts' / name}",
            f"tracking.tracking_uri={mlflow_uri}",
            "tracking.experiment=byo-test",
            *overrides,
        ],
    )


def test_own_corpus_pretrains_without_alignment_data(workdir, prefect_harness, mlflow_uri, monkeypatch):
    """No alignment data at all: the pretrain flow runs (decontamination skipped with a note); the
    lifecycle stops before any stage, naming the fields to set; with the built-in source on a corpus it
    cannot use, it stops right after align_data, before the tokenizer trains."""
    monkeypatch.chdir(workdir)
    none = ["align_data.sft_datasets=[]", "align_data.pref_datasets=[]"]
    cfg = byo_config(workdir, mlflow_uri, "none", *none, *QUICK)
    run = run_pipeline(cfg, ["pretrain"])
    m = {name: r.manifest for name, r in run.results.items()}
    assert list(m) == ["collect", "filter", "dedup", "scrub", "align_data", "tokenizer", "pretrain"]
    assert (
        m["align_data"].counts["sft_train"] == 0
        and "align_data.sft_datasets" in m["align_data"].extra["note"]
    )
    assert m["tokenizer"].counts["decontaminated_docs"] == 0
    assert m["tokenizer"].extra["decontamination"].startswith("decontamination skipped")
    assert m["pretrain"].metrics["final/val_loss"] > 0

    with pytest.raises(PrecheckError) as err:  # nothing configured: fails before the first stage
        run_pipeline(cfg)
    message = str(err.value)
    assert "stage 'sft' cannot run" in message and "no alignment data source is configured" in message
    assert "align_data.sft_datasets" in message and "align_data.pref_datasets" in message

    builtin = byo_config(workdir, mlflow_uri, "none", *none, *QUICK, "align_data.builtin=true")
    tokenizers = set((workdir / "artifacts/none/tokenizer").iterdir())
    with pytest.raises(
        PrecheckError, match=r"align_data made no sft_train rows\. Set align_data\.sft_datasets"
    ):
        run_pipeline(builtin)
    assert set((workdir / "artifacts/none/tokenizer").iterdir()) == tokenizers  # stopped before it


def test_own_alignment_files_split_and_decontaminate(workdir, prefect_harness, mlflow_uri, monkeypatch):
    """The user's SFT and preference files: split train/eval by prompt, preference rows shared by rm and
    judge, PPO on the SFT prompts; the corpus loses the documents overlapping held-out rows; a pretrain
    re-run is cached when only training rows change (the tokenizer keys on the eval documents only)."""
    monkeypatch.chdir(workdir)
    cfg = byo_config(workdir, mlflow_uri, "files", *QUICK)
    run = run_pipeline(cfg, ["tokenizer"])  # pretrain reads the tokenizer stage only
    align, tok = run.results["align_data"].manifest, run.results["tokenizer"].manifest
    c = align.counts
    n_rows = sum(1 for _ in open(workdir / "data/byo/sft.jsonl"))
    assert c["user_sft_sft"] == c["user_prefs_prefs"] == n_rows > 300
    assert c["sft_train"] + c["sft_eval"] == n_rows and 0.08 < c["sft_eval"] / n_rows < 0.25
    assert c["prefs_train"] + c["prefs_judge"] + c["prefs_eval"] == n_rows
    assert 0.2 < c["prefs_judge"] / (c["prefs_train"] + c["prefs_judge"]) < 0.45
    assert c["ppo_prompts"] == c["sft_train"]
    assert c["eval_documents"] == c["eval_documents_user"] == c["sft_eval"] + c["prefs_eval"]
    assert tok.counts["eval_docs_align_data"] == c["eval_documents"]
    assert tok.counts["decontaminated_overlap"] > 10  # the corpus holds the held-out answers
    dropped = read_jsonl(Path(tok.path) / "reports/decontaminated.jsonl")
    assert all(d["eval_id"].startswith(("sft:", "prefs:")) for d in dropped)

    heavier = byo_config(
        workdir,
        mlflow_uri,
        "files",
        *QUICK,
        "align_data.sft_datasets=[{path: data/byo/sft.jsonl, weight: 2}]",
    )
    again = run_pipeline(heavier, ["tokenizer"])
    assert (
        again.results["align_data"].status == "ran"
        and again.results["align_data"].manifest.counts["sft_train"] == 2 * c["sft_train"]
    )
    assert again.results["tokenizer"].status == "cached"  # so pretrain is cached too


@pytest.mark.slow
def test_byo_preset_runs_the_whole_lifecycle(workdir, prefect_harness, mlflow_uri, monkeypatch):
    """Every stage on the user's data at the smoke preset's sizes, evaluate and export included."""
    monkeypatch.chdir(workdir)
    run = run_pipeline(byo_config(workdir, mlflow_uri, "lifecycle"))
    assert run.failed_stage is None and list(run.results)[-1] == "export"
    m = {name: r.manifest for name, r in run.results.items()}
    assert m["sft"].metrics["eval_loss"] > 0
    assert m["reward"].counts.get("train_pairs", 1) > 0 and 0 <= m["reward"].metrics["eval_accuracy"] <= 1
    assert m["judge"].metrics["eval_accuracy"] >= 0 and "kl_ref_eval" in m["ppo"].metrics
    assert m["export"].extra.get("registered_model_version") or m["export"].counts.get(
        "registered_model_version"
    )
