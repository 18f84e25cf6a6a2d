"""The `evaluate` stage on a tiny real lineage: every metric, sane values, the right directions, gates
that fail a collapsed policy, and the model-free scores (reference scores, constant answer, diversity,
bootstrap, stratified sample)."""

from __future__ import annotations

import json
import logging
import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
from pydantic import ValidationError

from conf.evaluate import EvaluateConfig
from flows.stages import STAGES
from tasks import evaluate as ev
from tasks.common import gates
from tasks.common.alignment import GENERIC_ANSWERS
from tasks.common.jsonl import read_jsonl
from tasks.common.perplexity import val_windows
from tasks.common.stage import QualityGateError, run_stage
from tasks.common.tracking import MetricLogger
from tasks.evaluate import lm, report, scores
from tasks.evaluate import stage as ev_stage
from tests.eval_lineage import build_lineage, collapsed_policy
from tests.eval_lineage import corpus as eval_corpus
from tests.tiny_models import tiny_tokenizer

# the fake lineage's policies are barely trained: the collapse gates are tested on their own
NO_GATES = dict(min_distinct_ppo=None, min_margin_over_constant=None, max_ppl_ratio=None, max_kl=None)

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
    bootstrap_samples=200,
    **NO_GATES,
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
    assert result.manifest.counts["eval_packages"] == 6  # 6 of 16 prompts from 8 packages: one each
    assert result.manifest.counts["pref_pairs"] == 12
    assert result.manifest.counts["kl_samples"] == 12
    for k in ("eval/distinct_ppo", "eval/distinct2_ppo", "eval/token_f1_ppo", "eval/rouge_l_constant"):
        assert 0.0 <= m[k] <= 1.0, k
    for name in (
        "eval/judge_win_rate_ppo_vs_sft",
        "eval/judge_reward_delta_ppo_sft",
        "eval/rouge_l_delta_ppo_sft",
    ):
        assert m[f"{name}_ci_low"] <= m[name] <= m[f"{name}_ci_high"], name


def test_rm_accuracy_for_every_rejected_kind(evaluated):
    _, stages, result = evaluated
    kinds = {r["rejected_kind"] for r in read_jsonl(stages["align_data"].dir / "prefs" / "eval.jsonl")}
    assert kinds == {"other_object", "truncated", "generic"}
    m = result.manifest.metrics
    assert {k for k in m if k.startswith("eval/rm_accuracy_")} == {f"eval/rm_accuracy_{k}" for k in kinds}
    assert 0.0 <= m["eval/rm_prefers_reference_over_generic"] <= 1.0


def test_the_judge_is_another_model_than_the_reward_model(evaluated):
    """The judge stage's model scores the same answers differently from the policy's reward model."""
    m = evaluated[2].manifest.metrics
    assert m["eval/judge_reward_sft"] != pytest.approx(m["eval/reward_sft"])
    assert (
        m["eval/judge_accuracy"] != m["eval/rm_accuracy"]
        or m["eval/judge_reward_ppo"] != m["eval/reward_ppo"]
    )
    rows = list(read_jsonl(evaluated[2].manifest.dir / "responses.jsonl"))
    assert m["eval/judge_reward_ppo"] == pytest.approx(np.mean([r["judge_ppo"] for r in rows]))
    assert m["eval/token_f1_sft"] == pytest.approx(np.mean([r["token_f1_sft"] for r in rows]))


def test_constant_answer_is_chosen_on_the_training_split(evaluated):
    """The constant answer is the best candidate on sft/train.jsonl's references, never on the eval ones,
    and its eval score is that answer's mean score on the sampled held-out prompts."""
    _, stages, result = evaluated
    align = stages["align_data"].dir
    train = [r["completion"][-1]["content"] for r in read_jsonl(align / "sft" / "train.jsonl")]
    candidates = scores.constant_candidates(GENERIC_ANSWERS, train, 10, 128, seed=0)
    for score in ("rouge_l", "token_f1"):
        best = scores.best_constant(score, candidates, train)
        assert result.manifest.extra["constant_answers"][score] == best.text
        assert all(
            best.train_score >= np.mean(scores.score_all(score, train, [c] * len(train))) - 1e-12
            for c in candidates
        )
    rows = list(read_jsonl(result.manifest.dir / "responses.jsonl"))
    best = result.manifest.extra["constant_answers"]["rouge_l"]
    expected = np.mean([scores.rouge_l(r["reference"], best) for r in rows])
    assert result.manifest.metrics["eval/rouge_l_constant"] == pytest.approx(expected)


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
    assert m["eval/judge_win_rate_ppo_vs_sft"] == 0.5
    assert m["eval/judge_win_rate_ppo_vs_sft_ci_low"] == m["eval/judge_win_rate_ppo_vs_sft_ci_high"] == 0.5
    assert m["eval/judge_reward_delta_ppo_sft"] == 0.0
    assert m["eval/rouge_l_ppo"] == m["eval/rouge_l_sft"] and m["eval/token_f1_ppo"] == m["eval/token_f1_sft"]
    assert m["eval/distinct_ppo"] == m["eval/distinct_sft"]
    assert m["eval/ppl_ppo"] == pytest.approx(m["eval/ppl_sft"])
    assert m["eval/ppl_ratio_ppo_sft"] == pytest.approx(1.0)


def test_base_model_answers_when_asked(evaluated, tmp_path):
    cfg = EvaluateConfig(
        **{**FAST, "include_base": True, "sample_models": ["sft"], "decodings": ["greedy"], "plot": False}
    )
    m = ev.evaluate(cfg, inputs_of(evaluated[1]), tmp_path, MetricLogger()).metrics
    for k in ("judge_reward", "reward", "rouge_l", "token_f1", "distinct", "distinct2"):
        assert f"eval/{k}_base" in m, k


def test_outputs_and_generation_table(evaluated):
    _, _, result = evaluated
    out = result.manifest.dir
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert {(r["model"], r["decoding"]) for r in rows} == {
        (m, d) for m in ("base", "sft", "ppo") for d in ("greedy", "temperature", "top_k", "top_p", "beam")
    }
    assert all(r["repetition_penalty"] == 1.2 for r in rows)
    responses = [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]
    assert len(responses) == 6
    assert {"sft", "ppo", "reference", "module", "reward_sft", "judge_ppo", "token_f1_ppo"} <= set(
        responses[0]
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == pytest.approx(result.manifest.metrics)
    assert (out / "plots" / "perplexity.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "plots" / "alignment.png").exists()
    assert (out / "plots" / "independent.png").read_bytes()[:4] == b"\x89PNG"


def test_gate_names_the_failing_key(evaluated):
    root, stages, result = evaluated
    strict = EvaluateConfig(**{**FAST, "min_rm_accuracy": 1.0, "max_kl": 0.0})
    # gate thresholds do not change the stage hash: the cached folder is re-checked, not recomputed
    assert SPEC.hash_for(SimpleNamespace(evaluate=strict), inputs_of(stages)) == result.manifest.stage_hash
    msg = ev.gate(
        strict,
        result.manifest.model_copy(
            update={"metrics": {**result.manifest.metrics, "eval/rm_accuracy": 0.4, "eval/kl_ppo_sft": 1.5}}
        ),
    )
    assert "evaluate.min_rm_accuracy: eval/rm_accuracy=0.4 is below 1.0 by 0.6" in msg
    assert "evaluate.max_kl: eval/kl_ppo_sft=1.5 exceeds 0.0 by 1.5" in msg
    assert ev.gate(EvaluateConfig(**FAST), result.manifest) is None
    with pytest.raises(QualityGateError, match="evaluate.max_ppl_ppo"):
        run_stage(
            SPEC,
            SimpleNamespace(evaluate=EvaluateConfig(**{**FAST, "max_ppl_ppo": 1.0})),
            inputs_of(stages),
            root,
        )


def test_no_gate_passes_on_a_self_judged_number():
    """PPO optimised the policy reward model: none of its verdicts on the policy may open a gate."""
    for metric in gates.gated_metrics():
        assert not metric.startswith(("eval/reward_", "eval/win_rate_", "eval/rm_margin")), metric
    assert "eval/judge_win_rate_ppo_vs_sft" in gates.gated_metrics()


def healthy_metrics() -> dict[str, float]:
    return {
        "eval/distinct_ppo": 0.8,
        "eval/ppl_ratio_ppo_sft": 1.05,
        "eval/kl_ppo_sft": 2.0,
        "eval/rouge_l_ppo": 0.30,
        "eval/rouge_l_constant": 0.15,
        "eval/token_f1_ppo": 0.32,
        "eval/token_f1_constant": 0.18,
        "eval/judge_win_rate_ppo_vs_sft": 0.6,
        "eval/rm_accuracy": 0.8,
        "eval/ppl_ppo": 100.0,
    }


def test_a_constant_answer_policy_fails_the_default_gates(evaluated):
    """Every held-out prompt answered with the best constant answer itself (the strongest constant
    policy): the default gates fail it on diversity and on the reference scores, even with a perplexity
    and KL that pass, and they pass a healthy policy."""
    _, stages, result = evaluated
    rows = list(read_jsonl(result.manifest.dir / "responses.jsonl"))
    refs = [r["reference"] for r in rows]
    best = result.manifest.extra["constant_answers"]
    answers = {s: [best[s]] * len(refs) for s in best}
    metrics = {
        **healthy_metrics(),
        "eval/distinct_ppo": scores.distinct_rate(answers["rouge_l"]),
        "eval/rouge_l_ppo": float(np.mean(scores.score_all("rouge_l", refs, answers["rouge_l"]))),
        "eval/rouge_l_constant": result.manifest.metrics["eval/rouge_l_constant"],
        "eval/token_f1_ppo": float(np.mean(scores.score_all("token_f1", refs, answers["token_f1"]))),
        "eval/token_f1_constant": result.manifest.metrics["eval/token_f1_constant"],
    }
    found = gates.failures(EvaluateConfig(), metrics)
    assert len(found) == 3, found
    assert found[0].startswith("evaluate.min_distinct_ppo: eval/distinct_ppo=0.1667 is below 0.5 by 0.3333")
    assert "eval/rouge_l_ppo" in found[1] and "short by 0" in found[1]
    assert "eval/token_f1_ppo" in found[2]
    assert gates.failures(EvaluateConfig(), healthy_metrics()) == []
    missing = {k: v for k, v in healthy_metrics().items() if k != "eval/distinct_ppo"}
    assert gates.failures(EvaluateConfig(), missing) == [
        "evaluate.min_distinct_ppo: eval/distinct_ppo was not measured"
    ]


def test_a_collapsed_policy_fails_the_stage_gates(evaluated, tmp_path):
    """A real model that answers every prompt with one stock sentence, evaluated by the stage with the
    default gates: the stage fails, naming each gate and by how much."""
    root, stages, _ = evaluated
    collapsed = collapsed_policy(tmp_path, stages, "Return the result.")
    cfg = EvaluateConfig(**{**FAST, **{k: getattr(EvaluateConfig(), k) for k in NO_GATES}, "max_prompts": 16})
    with pytest.raises(QualityGateError) as failed:
        run_stage(SPEC, SimpleNamespace(evaluate=cfg), inputs_of(stages) | {"ppo": collapsed}, tmp_path)
    msg = str(failed.value)
    assert "evaluate.min_distinct_ppo: eval/distinct_ppo=0.0625 is below 0.5 by 0.4375" in msg
    assert "evaluate.min_margin_over_constant: eval/rouge_l_ppo=" in msg and "short by" in msg
    assert "evaluate.max_ppl_ratio: eval/ppl_ratio_ppo_sft=" in msg
    (done,) = (tmp_path / "evaluate").glob("*/manifest.json")  # the stage finished; its gate failed
    assert json.loads(done.read_text())["extra"]["policies"] == ["sft", "ppo"]


def test_reference_scores_match_rouge_score_and_squad_f1():
    texts = [
        "Return the sum of the list.",
        "return a list",
        "Hello, world! foo_bar 12x",
        "",
        "...",
        "The the the.",
        "Return True if the object is valid, False otherwise.",
    ]
    for a in texts:
        for b in texts:
            assert scores.rouge_l(a, b) == pytest.approx(lm.rouge_l(a, b)), (a, b)
    rng, corpus = random.Random(0), eval_corpus()
    for _ in range(300):  # the bit-parallel LCS against rouge_score's dynamic programme
        a, b = rng.choice(corpus), rng.choice(corpus)
        if rng.random() < 0.5:
            b = " ".join(rng.sample(a.split(), len(a.split())))
        assert scores.rouge_l(a, b) == pytest.approx(lm.rouge_l(a, b), abs=1e-12), (a, b)
    assert scores.token_f1("Return the sum.", "the sum of") == pytest.approx(2 / 3)
    assert scores.token_f1("a a b", "a b b") == pytest.approx(2 / 3)  # bag overlap: min counts
    assert scores.token_f1("", "") == 1.0 and scores.token_f1("x", "") == 0.0


def test_diversity():
    assert scores.distinct_rate(["Return x.", "Return  x.", "Return y."]) == pytest.approx(2 / 3)
    assert scores.distinct_rate(["same"] * 10) == 0.1
    assert scores.distinct_n(["a b c", "a b d"], 2) == 0.75  # (a b), (b c), (b d) of 4 bigrams
    assert scores.distinct_n(["one"], 2) == 0.0


def test_bootstrap_interval_is_seeded_and_paired():
    wins = scores.wins([1, 2, 3, 4] * 25, [0, 2, 5, 1] * 25)  # win, tie, loss, win
    ci = scores.bootstrap_mean(wins, 1000, seed=0)
    assert ci.value == pytest.approx(0.625) and ci.low < 0.625 < ci.high and ci.high - ci.low < 0.2
    assert scores.bootstrap_mean(wins, 1000, seed=0) == ci
    assert scores.bootstrap_mean([0.5] * 10, 100, seed=1) == scores.Interval(0.5, 0.5, 0.5)
    more = scores.bootstrap_mean(wins * 4, 1000, seed=0)
    assert more.high - more.low < ci.high - ci.low  # 4x the prompts: about half as wide


def test_prompt_sample_is_stratified_by_package(tmp_path, caplog):
    """A package-sorted file (the first 24 rows all one package) still gives a sample whose packages
    follow their shares; fewer rows than asked: all of them, with a warning."""
    sizes = {"xml": 65, "email": 23, "asyncio": 22, "json": 4, "cmd": 1}
    strata = [p for p, n in sizes.items() for _ in range(n)]
    picked = scores.stratified_sample(strata, 50, seed=0)
    assert len(picked) == len(set(picked)) == 50 and picked == sorted(picked)
    got = {p: sum(strata[i] == p for i in picked) for p in sizes}
    assert got == {"xml": 28, "email": 10, "asyncio": 9, "json": 2, "cmd": 1}  # largest remainders
    assert scores.stratified_sample(strata, 50, seed=1) != picked
    assert scores.stratified_sample(strata, 500, seed=0) == list(range(len(strata)))
    rows = [
        {"id": f"r{i}", "module": f"{p}.sub{i % 3}", "prompt": [], "completion": []}
        for i, p in enumerate(strata)
    ]
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.WARNING):
        sample, available = ev_stage.sample_prompts(EvaluateConfig(max_prompts=200), path)
    assert len(sample) == available == 115 and "fewer than evaluate.max_prompts=200" in caplog.text
    sample, _ = ev_stage.sample_prompts(EvaluateConfig(max_prompts=20), path)
    assert {ev_stage.package(r) for r in sample} == set(sizes)  # every package, sub-modules merged


def test_allocation_is_exact_and_keeps_every_stratum():
    rng = random.Random(0)
    for _ in range(300):
        sizes = {i: rng.randint(1, 40) for i in range(rng.randint(1, 12))}
        n = rng.randint(1, sum(sizes.values()))
        take = scores.allocate(sizes, n)
        assert sum(take.values()) == n and all(0 <= take[k] <= sizes[k] for k in sizes)
        if n >= len(sizes):
            assert min(take.values()) >= 1


def test_rouge_l():
    assert lm.rouge_l("Return the sum of the list.", "Return the sum of the list.") == 1.0
    assert lm.rouge_l("alpha beta gamma", "delta epsilon") == 0.0
    assert 0 < lm.rouge_l("return the sum of values", "return the values") < 1


def test_val_windows_predict_every_token_once():
    tokens = np.arange(23)
    w = val_windows(tokens, block_size=5, max_tokens=100)
    assert w.shape == (4, 6)
    assert np.concatenate([w[:1, 0], w[:, 1:].reshape(-1)]).tolist() == list(range(21))
    assert val_windows(tokens, block_size=50, max_tokens=10).shape == (1, 10)


def test_bytes_of_predicted_tokens():
    tok = tiny_tokenizer()
    text = "Return the sum. Divide data into n intervals."
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    w = val_windows(np.array(ids), block_size=4, max_tokens=len(ids))
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
    with pytest.raises(ValidationError, match="kl_samples >= 1"):
        EvaluateConfig(kl_samples=0)
    EvaluateConfig(kl_samples=0, max_kl=None)


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
