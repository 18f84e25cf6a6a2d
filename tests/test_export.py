"""The `export` stage: model folder, model card written from manifests + MLflow runs, registry entry.

Runs `evaluate` and `export` through the real stage runner against a real MLflow SQLite store, on a
tiny fake lineage whose upstream stages have MLflow runs of their own.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import ModelCard
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from conf.evaluate import EvaluateConfig
from conf.export import ExportConfig
from tasks import evaluate as ev
from tasks import export as mc
from tasks.common.stage import StageSpec, run_stage
from tasks.common.tracking import MetricLogger, Tracker
from tests.eval_lineage import build_lineage

EVAL = EvaluateConfig(
    block_size=64,
    max_val_tokens=1024,
    max_prompts=4,
    max_new_tokens=8,
    max_pref_pairs=8,
    sample_prompts=["Summarize json."],
    decodings=["greedy", "top_p"],
    sample_max_new_tokens=6,
    bootstrap_samples=100,
    # the fake lineage's policies are barely trained: the collapse gates are tested in test_evaluate
    min_distinct_ppo=None,
    min_margin_over_constant=None,
    max_ppl_ratio=None,
    max_kl=None,
)
NAME = "lmforge-card-test"
# the quantized exports' checks at test size (the tiny lineage's models are barely trained anyway)
SMALL_VERIFY = {"verify_val_tokens": 2048, "verify_prompts": 6, "verify_max_new_tokens": 12}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, mlflow_uri):
    root = tmp_path_factory.mktemp("export")
    tracker = Tracker(mlflow_uri, "export-test", artifact_location=root / "mlruns")
    parent = tracker.start_pipeline("export-test", params={}, tags={})
    stages = build_lineage(root, tracker, parent.run_id, sft_steps=20)
    cfg = SimpleNamespace(evaluate=EVAL, export=ExportConfig(registered_model_name=NAME, **SMALL_VERIFY))
    spec = StageSpec("evaluate", ev.evaluate, ev.INPUTS, ev.STAGE_VERSION, gate=ev.gate)
    stages["evaluate"] = run_stage(
        spec, cfg, {k: stages[k] for k in ev.INPUTS}, root, tracker, parent.run_id
    ).manifest
    spec = StageSpec("export", mc.export, tuple(stages), mc.STAGE_VERSION, gate=mc.gate)
    result = run_stage(spec, cfg, dict(stages), root, tracker, parent.run_id)
    tracker.end(parent)
    card = ModelCard.load(result.manifest.dir / "model" / "README.md")
    return SimpleNamespace(
        stages=stages, manifest=result.manifest, card=card, client=MlflowClient(mlflow_uri)
    )


def section(card: ModelCard, title: str) -> str:
    text = card.text
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def test_card_has_every_section(exported):
    for title in mc.SECTIONS:
        assert f"\n## {title}\n" in exported.card.text, title
    assert exported.card.data.license == "apache-2.0"
    assert exported.card.data.pipeline_tag == "text-generation"


SELF_JUDGED = ("eval/reward_", "eval/win_rate_", "eval/rm_")


def test_card_numbers_equal_the_logged_metrics(exported):
    ev_manifest = exported.stages["evaluate"]
    logged = exported.client.get_run(ev_manifest.mlflow_run_id).data.metrics
    in_yaml = {r.metric_name: r.metric_value for r in exported.card.data.eval_results}
    assert {k for k in ev.METRIC_NAMES if not k.startswith(SELF_JUDGED)} <= set(in_yaml)
    for name, value in in_yaml.items():
        assert value == ev_manifest.metrics[name] == logged[name], name
    table = section(exported.card, "Evaluation")
    rows = dict(re.findall(r"^\| (eval/\S+) \| (\S+) \|", table, flags=re.M))
    assert set(rows) == set(ev_manifest.metrics)  # the card shows every number, the header fewer
    for name, shown in rows.items():
        assert float(shown) == pytest.approx(logged[name], rel=1e-5), name


def test_model_index_holds_only_independently_judged_metrics(exported):
    """The policy's reward model judged what PPO optimised: none of its numbers is a model-index result;
    the card's table says which judge produced every number."""
    results = exported.card.data.eval_results
    assert results and not [r.metric_name for r in results if r.metric_name.startswith(SELF_JUDGED)]
    names = {r.metric_name for r in results}
    assert {
        "eval/judge_win_rate_ppo_vs_sft",
        "eval/rouge_l_ppo",
        "eval/token_f1_ppo",
        "eval/ppl_ppo",
    } <= names
    assert {mc.judged_by(r.metric_name) for r in results} <= set(mc.INDEPENDENT)
    table = section(exported.card, "Evaluation")
    judged = dict(re.findall(r"^\| (eval/\S+) \| \S+ \| ([^|]+) \|", table, flags=re.M))
    assert judged["eval/win_rate_ppo_vs_sft"].strip() == mc.SELF
    assert judged["eval/reward_ppo"].strip() == mc.SELF
    assert judged["eval/judge_win_rate_ppo_vs_sft"].strip() == mc.JUDGE
    assert judged["eval/rouge_l_constant"].strip() == mc.REFERENCES
    assert judged["eval/rm_accuracy"].strip() == mc.RM_LABELS
    for who in mc.JUDGE_NOTES:
        assert f"- **{who}**:" in table
    assert "PPO's win rate over SFT, independent judge RM: " in table and "95% CI" in table


def test_card_shows_sample_answers(exported):
    """A table of held-out prompts with the reference, SFT's and PPO's answers, as evaluate recorded them."""
    table = section(exported.card, "Evaluation")
    assert "| prompt | reference | SFT | PPO |" in table
    rows = [json.loads(line) for line in (exported.stages["evaluate"].dir / "responses.jsonl").open()]
    shown = mc.pick_answers(exported.stages["evaluate"], 8)
    assert len(shown) == min(8, len(rows))
    for r in shown:
        assert f"| {mc.clip(r['prompt'])} | {mc.clip(r['reference'])} |" in table
    packages = [r["module"].split(".")[0] for r in shown]
    assert len(set(packages)) == min(len(shown), len({r["module"].split(".")[0] for r in rows}))


def test_training_procedure_comes_from_mlflow_params(exported):
    text = section(exported.card, "Training procedure")
    for stage in ("tokenizer", "pretrain", "sft", "reward", "ppo"):
        m = exported.stages[stage]
        assert f"### {stage}" in text and f"MLflow run `{m.mlflow_run_id}`" in text
    pretrain = text[text.index("### pretrain") : text.index("### sft")]
    assert "| lr | 0.003 |" in pretrain and "| max_steps | 0 |" in pretrain
    assert "| final/train_loss | 6.2 |" in pretrain  # the MLflow run's metric
    ppo = text[text.index("### ppo") :]
    assert "| kl_coef | 0.05 |" in ppo


def test_training_data_compute_and_lineage(exported):
    data = section(exported.card, "Training data")
    assert "kind=pydocs" in data and "exact_duplicates=3" in data and "pii_email=4" in data
    assert "| tokenizer | decontaminated_docs | 2 |" in data
    compute = section(exported.card, "Compute")
    pre = exported.stages["pretrain"]
    per_token = float(exported.client.get_run(pre.mlflow_run_id).data.params["model.flops_per_token"])
    assert (
        f"| training FLOPs = model.flops_per_token x tokens | {per_token * pre.counts['tokens']:.6g} |"
        in compute
    )
    assert f"| final/flops_per_s | {pre.metrics['final/flops_per_s']:.6g} |" in compute
    assert "| pretrain | 2.5 | world_size=1, device=cpu |" in compute  # manifest extra + run tag
    assert "| evaluate |" in compute and "CPU" in compute  # evaluate records its own hardware
    lineage = section(exported.card, "Lineage")
    record = json.loads((exported.manifest.dir / "lineage.json").read_text())
    assert set(record) == set(exported.stages)
    for name, m in exported.stages.items():
        assert f"| {name} | {m.stage_hash} | {m.content_hash} | {m.mlflow_run_id} |" in lineage
        assert record[name]["content_hash"] == m.content_hash


def test_model_is_registered_with_its_lineage(exported, tmp_path):
    import mlflow
    from transformers import AutoModelForCausalLM

    extra = exported.manifest.extra
    assert extra["registered_model_name"] == NAME
    version = exported.client.get_model_version(NAME, str(extra["registered_model_version"]))
    assert version.run_id == exported.manifest.mlflow_run_id
    ppo = exported.stages["ppo"]
    assert version.tags["lmforge.ppo.content_hash"] == ppo.content_hash
    assert version.tags["lmforge.evaluate.run_id"] == exported.stages["evaluate"].mlflow_run_id
    # resolve models:/ through this test's store (mlflow's models:/ resolver uses the global registry URI)
    uri = exported.client.get_model_version_download_uri(NAME, version.version)
    local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path))
    assert (Path(local) / "README.md").exists()
    model = AutoModelForCausalLM.from_pretrained(local, local_files_only=True)
    assert (
        model.config.eos_token_id
        == json.loads((ppo.dir / "model" / "config.json").read_text())["eos_token_id"]
    )


def test_exported_folder_loads_and_holds_the_ppo_weights(exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder = exported.manifest.dir / "model"
    ppo = exported.stages["ppo"].dir / "model"
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    gen = GenerationConfig.from_pretrained(folder)
    assert gen.eos_token_id == tok.eos_token_id and tok.chat_template
    ours, theirs = load_file(folder / "model.safetensors"), load_file(ppo / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_export_without_tracking_skips_registration(exported, tmp_path):
    report = mc.export(ExportConfig(quantize=[]), dict(exported.stages), tmp_path, MetricLogger())
    assert "registered_model_version" not in report.extra
    card = ModelCard.load(tmp_path / "model" / "README.md")
    assert "from the stage manifest" in section(card, "Training procedure")
    assert {r.metric_name: r.metric_value for r in card.data.eval_results} == {
        k: v
        for k, v in exported.stages["evaluate"].metrics.items()
        if k.startswith("eval/") and mc.judged_by(k) in mc.INDEPENDENT
    }


def test_lineage_comes_from_the_input_manifests(exported, caplog):
    found = mc.lineage(dict(exported.stages))
    assert set(found) == set(exported.stages)
    assert list(found)[0] == "collect"
    # nothing is searched for beside the stage folders: an input export was not handed is named, not found
    with caplog.at_level(logging.WARNING, logger="tasks.export"):
        alone = mc.lineage({"evaluate": exported.stages["evaluate"]})
    assert set(alone) == {"evaluate"}
    assert "lineage: evaluate's input ppo" in caplog.text and "not among export's inputs" in caplog.text


# --- quantized exports ------------------------------------------------------------------------------

FORMATS = ("int8", "gguf_f16", "gguf_q8_0")


def test_quantized_exports_are_written_verified_and_logged(exported):
    m = exported.manifest
    logged = exported.client.get_run(m.mlflow_run_id).data.metrics
    assert set(m.extra["quantized"]) == set(FORMATS)
    assert "int8/model.safetensors" in m.files and "gguf/model-q8_0.gguf" in m.files  # content-hashed
    full = m.metrics["export/full/file_bytes"]
    for fmt in FORMATS:
        for name in ("ppl", "ppl_change", "token_agreement", "exact_match", "file_bytes", "tokens_per_s"):
            key = f"export/{fmt}/{name}"
            assert logged[key] == pytest.approx(m.metrics[key]), key
        assert abs(m.metrics[f"export/{fmt}/ppl_change"]) <= ExportConfig().max_ppl_increase[fmt]
        assert m.metrics[f"export/{fmt}/ppl"] == pytest.approx(
            m.metrics["export/full/ppl"] * (1 + m.metrics[f"export/{fmt}/ppl_change"])
        )
        assert 0.5 <= m.metrics[f"export/{fmt}/token_agreement"] <= 1.0
    assert m.metrics["export/gguf_f16/file_bytes"] < 0.6 * full  # half-size floats
    assert m.metrics["export/gguf_q8_0/file_bytes"] < m.metrics["export/gguf_f16/file_bytes"]
    assert m.extra["gate_failures"] == []
    text = section(exported.card, "Quantized exports")
    for fmt in FORMATS:
        row = re.search(rf"^\| {fmt} \| (\S+) \| (\S+) \| (\S+) \|", text, flags=re.M)
        assert row and row[1] == m.extra["quantized"][fmt]
        assert float(row[3]) == pytest.approx(m.metrics[f"export/{fmt}/ppl"], rel=1e-5)
    assert "every format within its limit" in text


def test_champion_alias_points_at_the_version_that_passed_every_gate(exported):
    version = exported.client.get_model_version_by_alias(NAME, "champion")
    assert int(version.version) == exported.manifest.extra["registered_model_version"]
    assert exported.manifest.extra["alias_uri"] == f"models:/{NAME}@champion"


def test_gguf_loads_back_with_the_training_tokenizer_and_template(exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.common.generation import chat_prompt_ids

    folder = exported.manifest.dir
    path = folder / exported.manifest.extra["quantized"]["gguf_f16"]
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    ref_tok = AutoTokenizer.from_pretrained(folder / "model")
    assert tok.chat_template == ref_tok.chat_template
    messages = [{"role": "user", "content": "Summarize json.dumps, please."}]
    assert chat_prompt_ids(tok, messages) == chat_prompt_ids(ref_tok, messages)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(folder / "model")
    ids = torch.tensor([chat_prompt_ids(tok, messages)])
    assert torch.allclose(model(ids).logits, ref(ids).logits, atol=5e-2)  # float16 weights


def test_a_quantized_export_beyond_its_perplexity_limit_fails_the_gate(exported, tmp_path):
    cfg = ExportConfig(
        quantize=["gguf_q8_0"], max_ppl_increase={"gguf_q8_0": -1.0}, **SMALL_VERIFY
    )  # any change fails
    report = mc.export(cfg, dict(exported.stages), tmp_path, MetricLogger())
    assert (
        report.extra["gate_failures"]
        and "gguf_q8_0: validation perplexity rose" in report.extra["gate_failures"][0]
    )
    assert "alias" not in report.extra
    manifest = SimpleNamespace(extra=report.extra)
    assert "gguf_q8_0" in (mc.gate(cfg, manifest) or "")
    assert mc.gate(cfg, SimpleNamespace(extra={"gate_failures": []})) is None


def test_a_model_that_only_warned_on_evaluates_gates_is_no_champion(exported):
    """evaluate.gate_action=warn lets a failing model reach export; the thresholds its run logged decide."""
    stages = {"evaluate": exported.stages["evaluate"]}
    distinct = stages["evaluate"].metrics["eval/distinct_ppo"]
    strict = {
        "params": {"min_distinct_ppo": str(distinct + 0.5), "max_kl": "None"},
        "metrics": {},
        "tags": {},
    }
    assert mc.warned_gates(stages, {"evaluate": strict})[0].startswith("evaluate.min_distinct_ppo:")
    from tasks.common.gates import BOUNDS

    off = {b.key: "None" for b in BOUNDS} | {"min_margin_over_constant": "None"}
    lenient = {"params": off, "metrics": {}, "tags": {}}
    assert mc.warned_gates(stages, {"evaluate": lenient}) == []
    assert mc.warned_gates(stages, {}) == []  # no run to read thresholds from (no tracking: no registry)
