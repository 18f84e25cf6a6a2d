"""Stage `export`: the final model folder, its quantized exports, its Hugging Face model card, and its
MLflow registry entry.

The card is written only from recorded facts: the manifests of the whole lineage (the stage's inputs:
the runner hands export every upstream stage) and the stages' MLflow runs (params = resolved configs,
metrics), read through the `MetricLogger` the runner gives the stage, which also registers the model.
Nothing upstream is re-measured here, so every number in the card equals a number logged upstream; the
only figures export measures itself are those of its quantized exports (`tasks.export.quantized`),
logged as `export/<format>/...` metrics. The registry alias `champion` goes to the new version only
when every gate passed (upstream gates stop the run before export; export's own is the quantization
gate), so `models:/<name>@champion` always names a model that passed them all.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from conf.export import ExportConfig
from tasks.common.artifacts import Manifest
from tasks.common.jsonl import read_jsonl
from tasks.common.stage import StageReport
from tasks.common.tracking import MetricLogger, RunRecord, flatten
from tasks.export.quantized import quantized_exports, quantized_table

log = logging.getLogger(__name__)
STAGE_VERSION = 2  # 2: quantized exports (int8, GGUF) and their gate

DATA_STAGES = ("collect", "filter", "dedup", "scrub", "align_data")
TRAIN_STAGES = ("tokenizer", "pretrain", "sft", "reward", "judge", "ppo")
SECTIONS = (
    "Intended use",
    "Training data",
    "Training procedure",
    "Evaluation",
    "Quantized exports",
    "Limitations and risks",
    "Compute",
    "Lineage",
)
HARDWARE_KEYS = ("hardware", "device", "devices", "world_size", "gpus", "nproc")
EVAL_DESCRIPTIONS = {
    "ppl": "perplexity on the validation token shards",
    "bpb": "bits per UTF-8 byte on the validation token shards",
    "ppl_ratio_ppo_sft": "validation perplexity of the aligned policy over SFT's",
    "rouge_l": "ROUGE-L F1 against the reference answers (held-out prompts)",
    "token_f1": "token F1 against the reference answers (held-out prompts)",
    "reward": "mean score of the policy's reward model (PPO optimised against it)",
    "win_rate_ppo_vs_sft": "share of held-out prompts where the policy's reward model prefers PPO over SFT",
    "rm_accuracy": "the policy's reward model: accuracy on held-out preference pairs",
    "rm_margin": "the policy's reward model: mean chosen - rejected score on held-out pairs",
    "rm_prefers_reference_over_generic": "the policy's reward model: share of held-out prompts where it "
    "scores the reference above every stock answer",
    "judge_reward": "mean score of the independent judge (a reward model no policy trained against)",
    "judge_win_rate_ppo_vs_sft": "share of held-out prompts where the independent judge prefers PPO over SFT",
    "judge_win_rate_ppo_vs_constant": "share of held-out prompts where the judge prefers PPO over the "
    "constant answer",
    "judge_reward_delta_ppo_sft": "mean judge score of PPO minus SFT, paired per prompt",
    "judge_accuracy": "the independent judge: accuracy on held-out preference pairs",
    "judge_prefers_reference_over_generic": "the independent judge: share of held-out prompts where it "
    "scores the reference above every stock answer",
    "distinct": "distinct greedy answers / prompts",
    "distinct2": "distinct word bigrams / bigrams over all greedy answers",
    "response_tokens": "mean tokens per greedy answer",
    "kl_ppo_sft": "KL(PPO || SFT) in nats per response, on sampled PPO responses",
}
# Who produced a number: the card says it for each one, and only independent ones go in `model-index`.
JUDGE = "independent judge RM"
REFERENCES = "reference answers"
SELF = "policy RM (self-judged)"
RM_LABELS = "held-out preference labels"
TOKENS = "validation tokens"
OUTPUTS = "the answers themselves"
INDEPENDENT = (JUDGE, REFERENCES, TOKENS, OUTPUTS)
JUDGE_NOTES = {
    JUDGE: "a reward model trained by the `judge` stage on preference pairs of packages disjoint from the "
    "policy's reward model; no policy was optimised against it",
    REFERENCES: "ROUGE-L and token F1 against the held-out reference answers, beside the best constant "
    "answer (one answer for every prompt, chosen on the training split)",
    SELF: "the reward model PPO optimised: a reward-hacked policy scores well here, so these numbers are "
    "no evidence of quality",
    RM_LABELS: "the policy's reward model checked against held-out preference labels (a property of the "
    "reward model, not of the policy)",
    TOKENS: "held-out token shards",
    OUTPUTS: "statistics of the greedy answers (diversity, length) and of sampled ones (KL)",
}


# --- the lineage ------------------------------------------------------------------------------------


def lineage(inputs: dict[str, Manifest]) -> dict[str, Manifest]:
    """The manifests export was handed, by stage name, oldest first.

    The runner passes export every upstream stage of the run, so the lineage is its inputs; nothing is
    searched for on disk. Each manifest's recorded inputs (content hashes) are checked against the
    manifests given, and a mismatch is logged: the card never silently mixes stages of different runs.
    """
    found = {m.stage: m for m in inputs.values()}
    for m in found.values():
        for up, content_hash in m.inputs.items():
            given = found.get(up)
            if given is None or given.content_hash != content_hash:
                log.warning(
                    "lineage: %s's input %s (%s) is not among export's inputs (%s)",
                    m.stage,
                    up,
                    content_hash,
                    given.content_hash if given else "missing",
                )
    return dict(sorted(found.items(), key=lambda kv: kv[1].created_at))


def mlflow_runs(stages: dict[str, Manifest], tracking: MetricLogger) -> dict[str, RunRecord]:
    """Each stage's MLflow run (params, metrics, tags), read through `tracking` by the run id its manifest
    recorded; empty without tracking."""
    runs: dict[str, RunRecord] = {}
    for name, m in stages.items():
        if not m.mlflow_run_id:
            continue
        try:
            run = tracking.read_run(m.mlflow_run_id)
        except LookupError as e:  # a run from another tracking store: the manifest still tells the story
            log.warning("model card: cannot read MLflow run %s of %s (%s)", m.mlflow_run_id, name, e)
            continue
        if run is not None:
            runs[name] = run
    return runs


# --- rendering --------------------------------------------------------------------------------------


def fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.6g}"
    text = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def table(header: tuple[str, ...], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def stats(m: Manifest) -> str:
    items = [f"{k}={fmt(v)}" for k, v in {**m.counts, **m.metrics}.items()]
    return ", ".join(items) or "-"


def training_data(stages: dict[str, Manifest]) -> str:
    """Sources, per-stage data statistics, decontamination and the held-out split, as recorded."""
    rows = [(name, stats(stages[name])) for name in (*DATA_STAGES, "tokenizer") if name in stages]
    parts = [
        data_sources(stages.get("collect")),
        "Documents, tokens, deduplication, PII and filtering statistics per stage:\n\n"
        + table(("stage", "counts and metrics"), rows),
        decontamination(stages),
        eval_split(stages.get("align_data")),
    ]
    return "\n\n".join(p for p in parts if p)


def data_sources(collect: Manifest | None) -> str:
    if collect is None:
        return ""
    sources = collect.config.get("sources") or []
    described = [", ".join(f"{k}={fmt(v)}" for k, v in s.items()) for s in sources]
    return "**Sources** (collect config): " + ("; ".join(described) or "-")


def decontamination(stages: dict[str, Manifest]) -> str:
    contam = [
        (name, k, v)
        for name, m in stages.items()
        for k, v in {**m.counts, **m.metrics}.items()
        if "contam" in k
    ]
    if not contam:
        return "**Decontamination**: no decontamination statistics were recorded in this lineage."
    return (
        "**Decontamination** (documents overlapping the held-out evaluation split, removed "
        "before tokenizer and model training):\n\n" + table(("stage", "statistic", "value"), contam)
    )


def eval_split(align: Manifest | None) -> str:
    if align is None:
        return ""
    return (
        f"Evaluation prompts come from whole modules held out by `align_data` "
        f"(eval_fraction={fmt(align.config.get('eval_fraction'))}): "
        f"{fmt(align.counts.get('sft_eval'))} SFT pairs, "
        f"{fmt(align.counts.get('prefs_eval'))} preference pairs."
    )


def training_procedure(stages: dict[str, Manifest], runs: dict[str, RunRecord]) -> str:
    parts = []
    for name in TRAIN_STAGES:
        m = stages.get(name)
        if m is None:
            continue
        run = runs.get(name)
        params = run["params"] if run else {k: v for k, v in flatten(m.config).items()}
        source = f"MLflow run `{m.mlflow_run_id}`" if run else "the stage manifest"
        final = run["metrics"] if run else {**m.metrics, **{f"count/{k}": v for k, v in m.counts.items()}}
        parts.append(
            f"### {name}\n\nHyperparameters (from {source}):\n\n"
            + table(("parameter", "value"), sorted(params.items()))
            + "\n\nFinal metrics:\n\n"
            + table(("metric", "value"), sorted(final.items()))
        )
    return "\n\n".join(parts) or "No training stages were recorded in this lineage."


def judged_by(metric: str) -> str:
    """Which judge produced an `eval/*` number (one of JUDGE_NOTES' keys)."""
    name = metric.removeprefix("eval/")
    if name.startswith("judge_"):
        return JUDGE
    if name.startswith(("rouge_l", "token_f1")):
        return REFERENCES
    if name.startswith(("rm_accuracy", "rm_margin", "rm_prefers")):
        return RM_LABELS
    if name.startswith(("reward_", "win_rate_")):
        return SELF
    if name.startswith(("ppl", "bpb")):
        return TOKENS
    return OUTPUTS


def evaluation(evaluate: Manifest | None, answers: list[dict] | None = None) -> str:
    if evaluate is None:
        return "No evaluation stage was recorded in this lineage."
    m = evaluate.metrics
    rows = [(k, v, judged_by(k), meaning(k)) for k, v in sorted(m.items())]
    parts = [
        f"Held-out evaluation (stage `evaluate`, hash `{evaluate.stage_hash}`, MLflow run "
        f"`{evaluate.mlflow_run_id}`): {fmt(evaluate.counts.get('eval_prompts'))} held-out prompts "
        f"(a seeded sample stratified by package: {fmt(evaluate.counts.get('eval_packages'))} packages), "
        f"{fmt(evaluate.counts.get('pref_pairs'))} preference pairs, "
        f"{fmt(evaluate.counts.get('val_tokens'))} validation tokens.",
        "Who judged each number:\n\n" + "\n".join(f"- **{k}**: {v}." for k, v in JUDGE_NOTES.items()),
        headline(m),
        side_by_side(m, evaluate.extra.get("constant_answers") or {}),
        sample_answers(answers or []),
        "All metrics:\n\n" + table(("metric", "value", "judged by", "meaning"), rows),
    ]
    return "\n\n".join(p for p in parts if p)


def meaning(metric: str) -> str:
    text = EVAL_DESCRIPTIONS.get(_short(metric), "")
    for end, word in (("_ci_low", "lower"), ("_ci_high", "upper")):
        if metric.endswith(end):
            return f"{word} end of the 95% paired bootstrap interval: {text}"
    return text


def with_interval(m: dict[str, float], name: str) -> str:
    low, high = m.get(f"{name}_ci_low"), m.get(f"{name}_ci_high")
    shown = f"{m[name]:.3f}"
    return f"{shown} (95% CI {low:.3f} to {high:.3f})" if low is not None and high is not None else shown


def headline(m: dict[str, float]) -> str:
    """PPO against SFT on the independent signals first, each with its bootstrap interval; the
    self-judged win rate last and labelled as such."""
    lines = [
        ("eval/judge_win_rate_ppo_vs_sft", f"PPO's win rate over SFT, {JUDGE}"),
        ("eval/judge_reward_delta_ppo_sft", f"PPO - SFT mean score, {JUDGE}"),
        ("eval/rouge_l_delta_ppo_sft", "PPO - SFT ROUGE-L"),
        ("eval/token_f1_delta_ppo_sft", "PPO - SFT token F1"),
        ("eval/rouge_l_delta_ppo_constant", "PPO - best constant answer, ROUGE-L"),
        ("eval/token_f1_delta_ppo_constant", "PPO - best constant answer, token F1"),
        ("eval/win_rate_ppo_vs_sft", f"PPO's win rate over SFT, {SELF}"),
    ]
    shown = [f"- {label}: {with_interval(m, name)}" for name, label in lines if name in m]
    return "**Headline** (paired over the same prompts):\n\n" + "\n".join(shown) if shown else ""


def side_by_side(m: dict[str, float], constants: dict[str, str]) -> str:
    """One row per model (and the constant answer): perplexity, reference scores, diversity, the judge's
    and the policy reward model's scores."""
    columns = [
        ("perplexity", "ppl"),
        ("bits/byte", "bpb"),
        ("ROUGE-L", "rouge_l"),
        ("token F1", "token_f1"),
        ("distinct", "distinct"),
        ("distinct-2", "distinct2"),
        ("judge RM reward (independent)", "judge_reward"),
        ("policy RM reward (self-judged)", "reward"),
    ]
    rows = [
        (model, *[m.get(f"eval/{key}_{model}", "-") for _, key in columns])
        for model in ("base", "sft", "ppo", "constant")
        if any(f"eval/{key}_{model}" in m for _, key in columns)
    ]
    text = table(("model", *[c for c, _ in columns]), rows)
    if constants:
        chosen = "; ".join(f'{score}: "{fmt(answer)}"' for score, answer in constants.items())
        text += f"\n\nThe constant answer (chosen on the training split, per score): {chosen}."
    return text


def clip(text: Any, limit: int = 160) -> str:
    text = str(text or "").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def sample_answers(rows: list[dict]) -> str:
    """The sample-answers table: prompt, reference, SFT's and PPO's greedy answers."""
    if not rows:
        return ""
    shown = [
        (clip(r.get("prompt")), clip(r.get("reference")), clip(r.get("sft")), clip(r.get("ppo")))
        for r in rows
    ]
    return "Sample answers (held-out prompts, greedy decoding):\n\n" + table(
        ("prompt", "reference", "SFT", "PPO"), shown
    )


def pick_answers(evaluate: Manifest | None, n: int) -> list[dict]:
    """Up to `n` rows of evaluate's `responses.jsonl`, one package after another so the table is not
    one package's prompts."""
    if evaluate is None or n == 0 or "responses.jsonl" not in evaluate.files:
        return []
    rows: list[dict] = read_jsonl(evaluate.file("responses.jsonl"))
    picked: list[dict] = []
    seen: set[str] = set()
    for r in rows:  # first pass: one row per package
        pkg = str(r.get("module") or "").split(".")[0]
        if pkg not in seen:
            seen.add(pkg)
            picked.append(r)
    picked += [r for r in rows if r not in picked]
    return picked[:n]


def _short(metric: str) -> str:
    name = metric.removeprefix("eval/")
    for suffix in ("_ci_low", "_ci_high"):
        name = name.removesuffix(suffix)
    for suffix in ("_base", "_sft", "_ppo", "_constant"):
        if name.endswith(suffix) and name.removesuffix(suffix) in EVAL_DESCRIPTIONS:
            return name.removesuffix(suffix)
    if name.startswith("rm_accuracy_"):
        return "rm_accuracy"
    return name


def limitations(cfg: ExportConfig, stages: dict[str, Manifest]) -> str:
    notes = []
    ev = stages.get("evaluate")
    if ev:
        m = ev.metrics
        if "eval/rm_accuracy" in m:
            notes.append(
                f"- The policy's reward model ranks held-out preference pairs correctly "
                f"{m['eval/rm_accuracy']:.1%} of the time; its rewards and win rates are self-judged (PPO "
                "optimised against it) and inherit its errors: read the independent judge's instead."
            )
        if "eval/rm_prefers_reference_over_generic" in m:
            notes.append(
                f"- The policy's reward model scores the reference answer above every stock answer on "
                f"{m['eval/rm_prefers_reference_over_generic']:.1%} of held-out prompts; the rest is room "
                "for a policy to win reward with generic answers."
            )
        if "eval/distinct_ppo" in m:
            notes.append(
                f"- The aligned policy gives {m['eval/distinct_ppo']:.1%} distinct answers per prompt "
                f"(SFT: {fmt(m.get('eval/distinct_sft'))})."
            )
        if "eval/kl_ppo_sft" in m:
            notes.append(
                f"- PPO moved the policy {fmt(m['eval/kl_ppo_sft'])} nats per response away from the SFT "
                "model (KL); a large value with rising reward is a sign of reward hacking."
            )
        if "eval/ppl_ppo" in m and "eval/ppl_sft" in m:
            notes.append(
                f"- Validation perplexity: SFT {fmt(m['eval/ppl_sft'])}, PPO {fmt(m['eval/ppl_ppo'])}."
            )
    scrub = stages.get("scrub")
    if scrub:
        notes.append(f"- PII scrubbing statistics (pattern-based, not exhaustive): {stats(scrub)}.")
    return cfg.limitations + ("\n\nFrom this lineage's records:\n\n" + "\n".join(notes) if notes else "")


def hardware(m: Manifest, run: RunRecord | None) -> str:
    """What the stage ran on: its manifest `extra`, or its MLflow run's tags (e.g. `pretrain.device`)."""
    found = {k: m.extra[k] for k in HARDWARE_KEYS if k in m.extra}
    for key, value in (run["tags"] if run else {}).items():
        short = key.rsplit(".", 1)[-1]
        if short in HARDWARE_KEYS and not key.startswith("mlflow.") and short not in found:
            found[short] = value
    return ", ".join(f"{k}={fmt(v)}" for k, v in found.items()) or "not recorded"


def pretrain_flops(pre: Manifest, run: RunRecord | None) -> list[tuple[str, Any]]:
    """FLOPs figures the pretrain stage recorded, and the total they imply for the tokens it trained on."""
    recorded = {**pre.counts, **pre.metrics, **pre.extra}
    rows: list[tuple[str, Any]] = [
        (k, v) for k, v in sorted(recorded.items()) if "flops" in k.lower() or k.endswith("mfu")
    ]
    tokens = pre.counts.get("tokens") or pre.counts.get("tokens_seen")
    per_token = run["params"].get("model.flops_per_token") if run else None
    params = pre.counts.get("parameters") or pre.counts.get("params")
    if tokens and per_token:
        rows.append(("training FLOPs = model.flops_per_token x tokens", float(per_token) * tokens))
    elif tokens and params:
        rows.append(("training FLOPs = 6 x parameters x tokens", 6.0 * params * tokens))
    return rows


def compute(stages: dict[str, Manifest], runs: dict[str, RunRecord]) -> str:
    rows = [(name, m.seconds, hardware(m, runs.get(name))) for name, m in stages.items()]
    total = sum(m.seconds for m in stages.values())
    text = table(("stage", "wall time (s)", "hardware"), rows) + f"\n\nTotal wall time: {fmt(total)} s."
    pre = stages.get("pretrain")
    flops = pretrain_flops(pre, runs.get("pretrain")) if pre else []
    if flops:
        text += "\n\nEstimated pretraining compute (pretrain manifest and run):\n\n" + table(
            ("quantity", "value"), flops
        )
    else:
        text += "\n\nEstimated pretraining FLOPs: not recorded in the pretrain manifest."
    return text


def lineage_table(stages: dict[str, Manifest]) -> str:
    rows = [(n, m.stage_hash, m.content_hash, m.mlflow_run_id or "-", m.path) for n, m in stages.items()]
    return table(("stage", "stage hash", "artifact hash", "MLflow run", "folder"), rows)


def eval_results(evaluate: Manifest | None, stages: dict[str, Manifest]) -> list:
    """model-index entries for the card's YAML header: one per independently judged `eval/*` metric
    (the judge, the references, the validation tokens, the answers' statistics), exact values."""
    from huggingface_hub import EvalResult

    if evaluate is None:
        return []
    data = stages.get("align_data")
    tok = stages.get("tokenizer")
    results = []
    for key, value in sorted(evaluate.metrics.items()):
        if not key.startswith("eval/") or judged_by(key) not in INDEPENDENT:
            continue  # self-judged numbers and the reward model's own accuracy are no results of the model
        on_tokens = _short(key) in ("ppl", "bpb")
        src = tok if on_tokens else data
        results.append(
            EvalResult(
                task_type="text-generation",
                dataset_type=f"lmforge/{src.stage if src else 'unknown'}",
                dataset_name="validation token shards" if on_tokens else "held-out eval split",
                dataset_split="val" if on_tokens else "eval",
                dataset_revision=src.content_hash if src else None,
                metric_type=key.removeprefix("eval/"),
                metric_name=key,
                metric_value=float(value),
            )
        )
    return results


def build_card(
    cfg: ExportConfig,
    stages: dict[str, Manifest],
    runs: dict[str, RunRecord],
    architecture: str,
    quantized: str = "No quantized exports were configured (export.quantize is empty).",
):
    from huggingface_hub import ModelCard, ModelCardData

    evaluate = stages.get("evaluate")
    algorithm = str(stages["ppo"].config.get("algorithm", "ppo")) if "ppo" in stages else "ppo"
    data = ModelCardData(
        language=cfg.language,
        license=cfg.license,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=list(dict.fromkeys(["lmforge", "llama", "sft", "rlhf", algorithm])),
        model_name=cfg.model_name,
        eval_results=eval_results(evaluate, stages) or None,
    )
    body = [
        f"# {cfg.model_name}",
        f"{architecture} trained end to end by the lmforge pipeline: pretraining, supervised fine-tuning "
        f"(LoRA, merged), a reward model and {algorithm.upper()}, evaluated by an independent judge reward "
        "model and reference answers. This card was generated from the lineage's manifests and MLflow runs; "
        f"the weights are the aligned policy. MLflow registry name: `{cfg.registered_model_name}`.",
        "## Intended use",
        cfg.intended_use,
        f"**Out of scope:** {cfg.out_of_scope_use}",
        "## Training data",
        training_data(stages),
        "## Training procedure",
        training_procedure(stages, runs),
        "## Evaluation",
        evaluation(evaluate, pick_answers(evaluate, cfg.sample_answers)),
        "## Quantized exports",
        quantized,
        "## Limitations and risks",
        limitations(cfg, stages),
        "## Compute",
        compute(stages, runs),
        "## Lineage",
        lineage_table(stages),
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(body) + "\n")


def describe_architecture(model_folder: Path) -> str:
    cfg = json.loads((model_folder / "config.json").read_text())
    arch = (cfg.get("architectures") or ["causal LM"])[0]
    return (
        f"A {arch} ({cfg.get('num_hidden_layers')} layers, hidden size {cfg.get('hidden_size')}, "
        f"{cfg.get('num_attention_heads')} heads, vocabulary {cfg.get('vocab_size')}, "
        f"context {cfg.get('max_position_embeddings')})"
    )


# --- the stage --------------------------------------------------------------------------------------


def export(cfg: ExportConfig, inputs: dict[str, Manifest], out: Path, log_: MetricLogger) -> StageReport:
    """Copy the PPO policy to `model/`, write its card from the lineage's manifests and MLflow runs (read
    through `log_`), record the lineage, and register the model through `log_` when tracking is on."""
    model = copy_policy(inputs, out / "model")
    stages = lineage(inputs)
    runs = mlflow_runs(stages, log_)
    metrics, quant, failures = quantized_exports(cfg, inputs, out, model)
    card = build_card(
        cfg, stages, runs, describe_architecture(model), *quantized_section(cfg, metrics, quant, failures)
    )
    card.save(model / "README.md")
    log_.log_metrics(metrics)
    for folder in ("int8", "gguf"):
        if (out / folder).exists():
            log_.log_artifact(out / folder, f"quantized/{folder}")
    record = lineage_record(stages)
    (out / "lineage.json").write_text(json.dumps(record, indent=2))
    log_.log_text(card.content, "export/README.md")
    log_.log_dict(record, "export/lineage.json")

    extra: dict[str, Any] = {"model_dir": "model", "card": "model/README.md", "lineage": record, **quant}
    extra["gate_failures"] = failures
    extra.update(register(cfg, log_, model, stages))
    extra.update(crown(cfg, log_, extra, failures + warned_gates(stages, runs)))
    weights = sum(p.stat().st_size for p in model.glob("*.safetensors"))
    return StageReport(
        counts={
            "lineage_stages": len(stages),
            "mlflow_runs_read": len(runs),
            "weight_bytes": weights,
            "eval_results": len(card.data.eval_results or []),
            "quantized_exports": len(quant.get("quantized", {})),
        },
        metrics=metrics,
        extra=extra,
        volatile=("lineage.json", "model/README.md"),  # this run's MLflow run ids and folders
    )


def quantized_section(
    cfg: ExportConfig, metrics: dict[str, float], quant: dict[str, Any], failures: list[str]
) -> tuple[str, ...]:
    """The card's "Quantized exports" section (empty tuple: build_card's default text)."""
    if not cfg.quantize:
        return ()
    text = quantized_table(metrics, list(cfg.quantize), quant)
    limits = ", ".join(f"{k} {v:.1%}" for k, v in sorted(cfg.max_ppl_increase.items()))
    verdict = "; ".join(failures) if failures else "every format within its limit"
    return (f"{text}\n\nGate (largest perplexity rise allowed: {limits}): {verdict}.",)


def warned_gates(stages: dict[str, Manifest], runs: dict[str, RunRecord]) -> list[str]:
    """Evaluate's gates, re-checked with the thresholds its MLflow run logged as params.

    With `evaluate.gate_action=warn` (the tiny preset) a failed gate only warns and the pipeline goes on
    to export; such a model is registered but is no champion. The thresholds are not in the manifest
    (they do not change evaluate's output), hence the run's params.
    """
    from conf.evaluate import EvaluateConfig
    from tasks.common.gates import BOUNDS, failures

    evaluate, run = stages.get("evaluate"), runs.get("evaluate")
    if evaluate is None or run is None:
        return []
    params = run["params"]
    keys = [b.key for b in BOUNDS] + ["min_margin_over_constant"]
    update = {k: None if params[k] in ("None", "") else float(params[k]) for k in keys if k in params}
    return failures(EvaluateConfig().model_copy(update=update), evaluate.metrics)


def crown(
    cfg: ExportConfig, log_: MetricLogger, extra: dict[str, Any], failures: list[str]
) -> dict[str, Any]:
    """Set the registry alias (`champion`) on the new version when every gate passed (`failures`: the
    export gate's and evaluate's warned ones); says which alias, or why none."""
    version = extra.get("registered_model_version")
    if not cfg.champion_alias or version is None:
        return {}
    if failures:
        log.warning("export: %s not set on version %s: %s", cfg.champion_alias, version, "; ".join(failures))
        return {"alias_withheld": failures}
    log_.set_model_alias(cfg.registered_model_name, cfg.champion_alias, int(version))
    return {
        "alias": cfg.champion_alias,
        "alias_uri": f"models:/{cfg.registered_model_name}@{cfg.champion_alias}",
    }


def gate(cfg: ExportConfig, manifest: Manifest) -> str | None:
    """The quantization gate: a format whose validation perplexity rose beyond its limit fails export."""
    failures = manifest.extra.get("gate_failures") or []
    return "; ".join(failures) or None


def copy_policy(inputs: dict[str, Manifest], model: Path) -> Path:
    """The ppo stage's `model/` files, copied to `model`, with a generation config; returns `model`."""
    if "ppo" not in inputs:
        raise ValueError(
            f"export needs the ppo stage's output (its model/ is what gets exported); got {sorted(inputs)}"
        )
    ppo = inputs["ppo"]
    sources = ppo.files_under("model/")
    if not any(p.name == "config.json" for p in sources):
        raise FileNotFoundError(f"stage ppo ({ppo.path}) has no model/config.json: nothing to export")
    for src in sources:
        dst = model / src.relative_to(ppo.dir / "model")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    ensure_generation_config(model)
    return model


def lineage_record(stages: dict[str, Manifest]) -> dict[str, dict[str, Any]]:
    """`lineage.json`: each stage's hashes, MLflow run, folder and wall time."""
    return {
        n: {
            "stage_hash": m.stage_hash,
            "content_hash": m.content_hash,
            "mlflow_run_id": m.mlflow_run_id,
            "path": m.path,
            "seconds": m.seconds,
        }
        for n, m in stages.items()
    }


def ensure_generation_config(model: Path) -> None:
    """The exported folder always has a generation_config.json carrying the tokenizer's special ids."""
    if (model / "generation_config.json").exists():
        return
    from transformers import AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(str(model), local_files_only=True)
    GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    ).save_pretrained(str(model))


def register(
    cfg: ExportConfig, log_: MetricLogger, model: Path, stages: dict[str, Manifest]
) -> dict[str, Any]:
    """Register the model folder as a new model version through `log_`, tagged with its lineage."""
    if not cfg.register_model:
        return {}
    version = log_.register_model(
        model,
        cfg.registered_model_name,
        tags=registry_tags(stages),
        description=f"lmforge export of ppo {stages['ppo'].content_hash}" if "ppo" in stages else None,
        model_tags={"lmforge.kind": "policy"},
        model_description="PPO policies exported by lmforge; each version's tags point at its lineage.",
    )
    if version is None:
        log.warning(
            "export: no MLflow tracking for this run; the model is not registered (%s)",
            cfg.registered_model_name,
        )
        return {}
    log.info("export: registered %s version %s from %s", version.name, version.version, version.source)
    return {
        "registered_model_name": version.name,
        "registered_model_version": version.version,
        "model_uri": version.uri,
        "model_source": version.source,
    }


def registry_tags(stages: dict[str, Manifest]) -> dict[str, str]:
    """A model version's tags: every lineage stage's hashes and MLflow run."""
    tags: dict[str, str] = {}
    for name, m in stages.items():
        tags[f"lmforge.{name}.stage_hash"] = m.stage_hash
        tags[f"lmforge.{name}.content_hash"] = m.content_hash
        if m.mlflow_run_id:
            tags[f"lmforge.{name}.run_id"] = m.mlflow_run_id
    return tags
