"""The `evaluate` stage on a tiny real lineage: every metric, sane values, the right directions, gates."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from pydantic import ValidationError

from conf.evaluate import EvaluateConfig
from flows.stages import STAGES
from tasks import evaluate as ev
from tasks.common.stage import QualityGateError, run_stage
from tasks.common.tracking import MetricLogger
from tasks.evaluate import lm, report
from tests.eval_lineage import build_lineage
from tests.tiny_models import tiny_tokenizer

FAST = dict(
    block_size=64,
    max_val_tokens=2048,
    max_prompts=6,
    max_new_tokens=12,
    max_pref_pairs=12,
    sample_prompts=["Summarize join in module os.path."],
    sample_max_new_tokens=8,
    num_beams=2,
    sample_models=["base", "sft", "ppo"],
    kl_samples=2,
    repetition_penalty=1.2,
)
SPEC = STAGES["evaluate"]  # the registry's spec: gate and lm_eval_include_path fingerprint included


def inputs_of(stages):
    return {k: stages[k] for k in ev.INPUTS}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    stages = build_lineage(root)
    result = run_stage(SPEC, SimpleNamespace(evaluate=EvaluateConfig(**FAST)), inputs_of(stages), root)
    return root, stages, result


def test_every_metric_is_finite(evaluated):
    _, _, result = evaluated
    m = result.manifest.metrics
    assert set(ev.METRIC_NAMES) <= set(m)
    assert all(math.isfinite(m[k]) for k in ev.METRIC_NAMES)
    for k in ("eval/rouge_l_sft", "eval/rouge_l_ppo", "eval/rm_accuracy", "eval/win_rate_ppo_vs_sft"):
        assert 0.0 <= m[k] <= 1.0, k
    assert m["eval/ppl_base"] > 1 and m["eval/bpb_base"] > 0
    assert result.manifest.counts["eval_prompts"] == 6
    assert result.manifest.counts["pref_pairs"] == 12
    assert result.manifest.counts["kl_samples"] == 12


def test_training_lowers_perplexity_and_bits_per_byte(evaluated):
    """pretrain holds an untrained model, sft the same model after 60 steps on the train tokens."""
    m = evaluated[2].manifest.metrics
    assert m["eval/ppl_sft"] < 0.5 * m["eval/ppl_base"]
    assert m["eval/bpb_sft"] < m["eval/bpb_base"]
    # an untrained model is close to uniform over the vocabulary
    vocab = 512
    assert 0.3 * vocab < m["eval/ppl_base"] < 3 * vocab


def test_kl_is_zero_when_ppo_is_sft(evaluated, tmp_path):
    inputs = inputs_of(evaluated[1]) | {"ppo": evaluated[1]["sft"]}
    cfg = EvaluateConfig(
        **{**FAST, "sample_models": ["sft"], "decodings": ["greedy"], "max_prompts": 3, "plot": False}
    )
    m = ev.evaluate(cfg, inputs, tmp_path, MetricLogger()).metrics
    assert m["eval/kl_ppo_sft"] == pytest.approx(0.0, abs=1e-4)
    assert m["eval/win_rate_ppo_vs_sft"] == 0.5  # identical responses tie
    assert m["eval/rouge_l_ppo"] == m["eval/rouge_l_sft"]
    assert m["eval/ppl_ppo"] == pytest.approx(m["eval/ppl_sft"])


def test_outputs_and_generation_table(evaluated):
    _, _, result = evaluated
    out = result.manifest.dir
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert {(r["model"], r["decoding"]) for r in rows} == {
        (m, d) for m in ("base", "sft", "ppo") for d in ("greedy", "temperature", "top_k", "top_p", "beam")
    }
    assert all(r["repetition_penalty"] == 1.2 for r in rows)
    responses = [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]
    assert len(responses) == 6 and {"sft", "ppo", "reference", "reward_sft"} <= set(responses[0])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == pytest.approx(result.manifest.metrics)
    assert (out / "plots" / "perplexity.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "plots" / "alignment.png").exists()


def test_gate_names_the_failing_key(evaluated):
    root, stages, result = evaluated
    strict = EvaluateConfig(**FAST, min_rm_accuracy=1.0, max_kl=0.0)
    # gate thresholds do not change the stage hash: the cached folder is re-checked, not recomputed
    assert SPEC.hash_for(SimpleNamespace(evaluate=strict), inputs_of(stages)) == result.manifest.stage_hash
    msg = ev.gate(
        strict,
        result.manifest.model_copy(
            update={"metrics": {**result.manifest.metrics, "eval/rm_accuracy": 0.4, "eval/kl_ppo_sft": 1.5}}
        ),
    )
    assert "evaluate.min_rm_accuracy" in msg and "eval/rm_accuracy=0.4" in msg and "evaluate.max_kl" in msg
    assert ev.gate(EvaluateConfig(), result.manifest) is None
    with pytest.raises(QualityGateError, match="evaluate.max_ppl_ppo"):
        run_stage(
            SPEC, SimpleNamespace(evaluate=EvaluateConfig(**FAST, max_ppl_ppo=1.0)), inputs_of(stages), root
        )


def test_rouge_l():
    assert lm.rouge_l("Return the sum of the list.", "Return the sum of the list.") == 1.0
    assert lm.rouge_l("alpha beta gamma", "delta epsilon") == 0.0
    assert 0 < lm.rouge_l("return the sum of values", "return the values") < 1


def test_val_windows_predict_every_token_once():
    tokens = np.arange(23)
    w = lm.val_windows(tokens, block_size=5, max_tokens=100)
    assert w.shape == (4, 6)
    assert np.concatenate([w[:1, 0], w[:, 1:].reshape(-1)]).tolist() == list(range(21))
    assert lm.val_windows(tokens, block_size=50, max_tokens=10).shape == (1, 10)


def test_bytes_of_predicted_tokens():
    tok = tiny_tokenizer()
    text = "Return the sum. Divide data into n intervals."
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    w = lm.val_windows(np.array(ids), block_size=4, max_tokens=len(ids))
    used = [w[0, 0], *w[:, 1:].reshape(-1)]
    expected = len(tok.decode(used, skip_special_tokens=True).encode()) - len(tok.decode(used[:1]).encode())
    assert lm.predicted_bytes(tok, w) == expected > 0


def test_config_rejects_bad_values():
    with pytest.raises(ValidationError, match="min_rm_accuracy"):
        EvaluateConfig(min_rm_accuracy=1.5)
    with pytest.raises(ValidationError, match="decodings"):
        EvaluateConfig(decodings=["nucleus"])
    with pytest.raises(ValidationError, match="lm_eval_limit"):
        EvaluateConfig(lm_eval_limit=0)


def test_lm_eval_is_optional(evaluated, monkeypatch):
    """Without lm-evaluation-harness installed, asking for its tasks fails naming the fix."""
    import sys

    monkeypatch.setitem(sys.modules, "lm_eval", None)
    cfg = EvaluateConfig(lm_eval_tasks=["hellaswag"])
    with pytest.raises(RuntimeError, match="lmforge\\[eval\\]"):
        report.run_lm_eval(cfg, {"ppo": evaluated[1]["ppo"].dir / "model"}, "cpu")


LM_EVAL_TASK = """\
task: pydoc_module_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
  - metric: acc_norm
"""
LM_EVAL_ROWS = [
    ("join", "os.path"),
    ("loads", "json"),
    ("chain", "itertools"),
    ("mean", "statistics"),
    ("quote", "shlex"),
    ("parse", "ast"),
    ("walk", "os"),
    ("dedent", "textwrap"),
]


def lm_eval_task_folder(folder):
    """A multiple-choice lm_eval task on a local JSONL of 8 questions (no Hub dataset)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "question": f"Which module holds {fn}?",
            "choices": [mod, "json" if mod != "json" else "ast", "shlex"],
            "answer": 0,
        }
        for fn, mod in LM_EVAL_ROWS
    ]
    (folder / "pydoc_module_mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "pydoc_module_mc.yaml").write_text(LM_EVAL_TASK.format(data=folder / "pydoc_module_mc.jsonl"))
    return folder


@pytest.mark.slow  # needs the `eval` extra, which `make test-slow` installs
def test_lm_eval_runs_a_local_task_offline(evaluated, tmp_path, monkeypatch):
    """The real harness path: a task YAML + JSONL from lm_eval_include_path, scored on the tiny SFT and PPO
    models, with every socket connection refused (a Hub lookup would fail the run)."""
    pytest.importorskip("lm_eval")
    import socket

    import datasets

    attempts = []

    def refuse(sock, address):
        attempts.append(address)
        raise OSError(f"test: network access to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    folder = lm_eval_task_folder(tmp_path / "lm_eval_tasks")
    (tmp_path / "out").mkdir()
    cfg = EvaluateConfig(
        **{
            **FAST,
            "sample_models": ["sft"],
            "decodings": ["greedy"],
            "max_prompts": 2,
            "plot": False,
            "lm_eval_tasks": ["pydoc_module_mc"],
            "lm_eval_models": ["sft", "ppo"],
            "lm_eval_limit": 6,
            "lm_eval_include_path": str(folder),
        }
    )
    m = ev.evaluate(cfg, inputs_of(evaluated[1]), tmp_path / "out", MetricLogger()).metrics
    assert attempts == []
    for model in ("sft", "ppo"):
        for metric in ("acc_none", "acc_norm_none"):
            assert 0.0 <= m[f"lm_eval/{model}/pydoc_module_mc/{metric}"] <= 1.0
        assert m[f"lm_eval/{model}/pydoc_module_mc/sample_len"] == 6  # lm_eval_limit
    assert not any("stderr" in k for k in m)
    assert (
        json.loads((tmp_path / "out" / "metrics.json").read_text())["lm_eval/ppo/pydoc_module_mc/acc_none"]
        == m["lm_eval/ppo/pydoc_module_mc/acc_none"]
    )


@pytest.mark.slow
def test_lm_eval_include_path_errors_name_the_field(evaluated, tmp_path):
    pytest.importorskip("lm_eval")
    model = {"ppo": evaluated[1]["ppo"].dir / "model"}
    missing = EvaluateConfig(lm_eval_tasks=["pydoc_module_mc"], lm_eval_include_path=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="evaluate.lm_eval_include_path="):
        report.run_lm_eval(missing, model, "cpu")
    folder = lm_eval_task_folder(tmp_path / "tasks")
    unknown = EvaluateConfig(lm_eval_tasks=["pydoc_modul_mc"], lm_eval_include_path=str(folder))
    with pytest.raises(ValueError, match=r"lm_eval_tasks names \['pydoc_modul_mc'\].*pydoc_module_mc"):
        report.run_lm_eval(unknown, model, "cpu")


def test_lm_eval_include_folder_content_keys_the_stage_hash(evaluated, tmp_path):
    folder = lm_eval_task_folder(tmp_path / "tasks")
    cfg = EvaluateConfig(lm_eval_tasks=["pydoc_module_mc"], lm_eval_include_path=str(folder))
    hash_of = lambda c: SPEC.hash_for(SimpleNamespace(evaluate=c), inputs_of(evaluated[1]))  # noqa: E731
    before = hash_of(cfg)
    assert set(SPEC.keyed_config(SimpleNamespace(evaluate=cfg))["_lm_eval_include_sha256"]) == {
        "pydoc_module_mc.jsonl",
        "pydoc_module_mc.yaml",
    }
    with (folder / "pydoc_module_mc.jsonl").open("a") as f:
        f.write(
            json.dumps({"question": "Which module holds sqrt?", "choices": ["math", "os"], "answer": 0})
            + "\n"
        )
    assert hash_of(cfg) != before
    assert "_lm_eval_include_sha256" not in SPEC.keyed_config(SimpleNamespace(evaluate=EvaluateConfig()))
