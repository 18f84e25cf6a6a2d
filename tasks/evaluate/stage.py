"""The body of the `evaluate` stage (see the package docstring for what it measures), one step a function:
perplexity of each model (and its sample generations), each policy's answers to a stratified sample of
held-out prompts with the KL between PPO and SFT, the reference-based scores beside the best constant
answer, the verdicts of the policy's reward model and of the independent judge (`judging.py`), then the
files. What the steps hand each other is in `records.py`.

Models are loaded one at a time and dropped when their step is done, so the stage needs the memory of
the policies being compared at most, and each reward model only after them.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conf.evaluate import EvaluateConfig
from tasks.common.alignment import GENERIC_ANSWERS, PREF_FILES, SFT_FILES
from tasks.common.artifacts import Manifest
from tasks.common.generation import chat_prompt_ids, generate_batched
from tasks.common.jsonl import read_jsonl, write_jsonl
from tasks.common.models import device, load_causal_lm, load_tokenizer, model_dir
from tasks.common.perplexity import read_val_tokens, val_windows
from tasks.common.stage import StageReport
from tasks.common.tracking import MetricLogger
from tasks.evaluate import INPUTS, MODELS, lm, report, scores
from tasks.evaluate.judging import alignment_metrics, judge, judge_metrics
from tasks.evaluate.records import (
    CONSTANT,
    Answers,
    EvalData,
    Judgement,
    References,
    content,
    interval,
    mean,
    package,
)

log = logging.getLogger(__name__)


def run(cfg: EvaluateConfig, inputs: dict[str, Manifest], out: Path, log_: MetricLogger) -> StageReport:
    check_inputs(cfg, inputs)
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    data = read_eval_data(cfg, inputs["align_data"])
    tokens, val_tok = read_val_tokens(inputs["tokenizer"])
    paths = {name: model_dir(inputs[stage]) for name, stage in MODELS.items()}
    metrics, counts, samples, policies = measure_models(cfg, paths, tokens, val_tok, data.sample_prompts)
    answers = answer_prompts(cfg, policies, paths, data)
    del policies  # the reward models load next
    refs = reference_scores(cfg, data, answers)
    constant = refs.constants["rouge_l"].text
    judged = judge(cfg, model_dir(inputs["reward"]), data, answers, constant)
    independent = judge(cfg, model_dir(inputs["judge"]), data, answers, constant)
    metrics.update(alignment_metrics(data, answers, judged))
    metrics.update(judge_metrics(cfg, independent))
    metrics.update(reference_metrics(cfg, refs))
    metrics.update(diversity_metrics(answers))
    metrics["eval/ppl_ratio_ppo_sft"] = metrics["eval/ppl_ppo"] / metrics["eval/ppl_sft"]
    check_finite(metrics, paths)
    counts.update(
        {
            "eval_prompts": len(data.rows),
            "eval_prompts_available": data.available,
            "eval_packages": len({package(r) for r in data.rows}),
            "pref_pairs": len(data.pairs),
            "constant_train_rows": len(data.train_answers),
            "constant_candidates": refs.constants["rouge_l"].candidates,
            "kl_samples": len(answers.kls),
            "sample_generations": len(samples),
        }
    )
    if cfg.lm_eval_tasks:
        metrics.update(report.run_lm_eval(cfg, {m: paths[m] for m in cfg.lm_eval_models}, str(device())))
    rows = response_rows(data, answers, refs, judged, independent)
    write_outputs(cfg, out, log_, metrics, rows, samples, answers, judged, independent)
    log.info("evaluate: %s", ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    return StageReport(
        counts=counts,
        metrics=metrics,
        extra={
            "device": report.hardware(),
            "seconds_measured": round(time.perf_counter() - started, 3),
            "sample_prompts": data.sample_prompts,
            "decodings": list(cfg.decodings),
            "policies": list(answers.texts),
            "constant_answers": {s: c.text for s, c in refs.constants.items()},
            "judges": {"reward": str(model_dir(inputs["reward"])), "judge": str(model_dir(inputs["judge"]))},
        },
    )


# --- inputs ---------------------------------------------------------------------------------------------


def check_inputs(cfg: EvaluateConfig, inputs: dict[str, Manifest]) -> None:
    """Fail before any model loads: a missing upstream stage or lm_eval folder would otherwise surface only
    after minutes of generation."""
    missing = [k for k in INPUTS if k not in inputs]
    if missing:
        raise ValueError(f"evaluate needs the outputs of {', '.join(INPUTS)}; missing: {', '.join(missing)}")
    if cfg.lm_eval_tasks:
        report.lm_eval_include_folder(cfg)


def read_rows(path: Path) -> list[dict]:
    """Every record of a JSONL file of align_data; an empty file is an upstream error."""
    rows: list[dict] = read_jsonl(path)
    if not rows:
        raise ValueError(f"{path} is empty: the align_data stage produced no examples")
    return rows


def sample_prompts(cfg: EvaluateConfig, path: Path) -> tuple[list[dict], int]:
    """(sampled rows, rows available): a seeded sample stratified by package, so no package's share of
    the file decides the numbers by where it happens to sit in it."""
    rows = read_rows(path)
    if len(rows) < cfg.max_prompts:
        log.warning(
            "evaluate: %s holds %d held-out prompts, fewer than evaluate.max_prompts=%d: using all of them "
            "(win-rate intervals widen)",
            path,
            len(rows),
            cfg.max_prompts,
        )
    picked = scores.stratified_sample([package(r) for r in rows], cfg.max_prompts, cfg.seed)
    return [rows[i] for i in picked], len(rows)


def sample_pairs(cfg: EvaluateConfig, path: Path) -> list[dict]:
    """Held-out preference pairs, stratified by how the rejected answer was made (every kind stays in)."""
    rows = read_rows(path)
    kinds = [str(r.get("rejected_kind") or "unknown") for r in rows]
    return [rows[i] for i in scores.stratified_sample(kinds, cfg.max_pref_pairs, cfg.seed)]


def train_answers(cfg: EvaluateConfig, path: Path) -> list[str]:
    """A seeded sample of the training split's reference answers: what the constant answer is chosen on
    (never the held-out references it is then scored against)."""
    answers = [content(r["completion"], path, "completion") for r in read_rows(path)]
    if len(answers) <= cfg.constant_train_rows:
        return answers
    return random.Random(cfg.seed).sample(answers, cfg.constant_train_rows)


def read_eval_data(cfg: EvaluateConfig, align: Manifest) -> EvalData:
    prompts_path = align.file(SFT_FILES["eval"])
    rows, available = sample_prompts(cfg, prompts_path)
    pairs = sample_pairs(cfg, align.file(PREF_FILES["eval"]))
    train = train_answers(cfg, align.file(SFT_FILES["train"]))
    shown = cfg.sample_prompts or [content(r["prompt"], prompts_path, "prompt") for r in rows[:3]]
    return EvalData(prompts_path, rows, available, pairs, train, shown)


# --- perplexity and sample generations, one model at a time ----------------------------------------------


def answering(cfg: EvaluateConfig) -> list[str]:
    """The models that answer the held-out prompts: SFT and PPO, and the base model when asked."""
    return ["base", "sft", "ppo"] if cfg.include_base else ["sft", "ppo"]


def measure_models(
    cfg: EvaluateConfig, paths: dict[str, Path], tokens: np.ndarray, val_tok: Any, sample_prompts: list[str]
) -> tuple[dict[str, float], dict[str, int], list[dict], dict[str, tuple]]:
    """(metrics, counts, sample generations, {model: (model, tokenizer)}): perplexity and bits per byte
    of every model, its decoding table if asked for; the answering models stay loaded for the answers."""
    metrics: dict[str, float] = {}
    counts: dict[str, int] = {}
    samples: list[dict] = []
    policies: dict[str, tuple] = {}
    for name, path in paths.items():
        model, tok = load_causal_lm(path).to(device()).eval(), load_tokenizer(path)
        ppl, bpb, counts = perplexity(cfg, name, model, tokens, val_tok)
        metrics[f"eval/ppl_{name}"], metrics[f"eval/bpb_{name}"] = ppl, bpb
        if name in cfg.sample_models:
            samples += sample_generations(cfg, name, model, tok, sample_prompts)
        if name in answering(cfg):
            policies[name] = (model, tok)
        del model
    return metrics, counts, samples, policies


def perplexity(
    cfg: EvaluateConfig, name: str, model: Any, tokens: np.ndarray, val_tok: Any
) -> tuple[float, float, dict[str, int]]:
    """(perplexity, bits per byte, counts of what was scored) over windows that fit the model's context."""
    ctx = getattr(model.config, "max_position_embeddings", None) or cfg.block_size + 1
    windows = val_windows(tokens, min(cfg.block_size, ctx - 1), cfg.max_val_tokens)
    n_bytes = lm.predicted_bytes(val_tok, windows)
    ppl, bpb = lm.perplexity_and_bpb(model, windows, n_bytes, cfg.batch_size)
    log.info(
        "evaluate: %s ppl %.3f, %.4f bits/byte over %d tokens (%d bytes)",
        name,
        ppl,
        bpb,
        windows[:, 1:].size,
        n_bytes,
    )
    return ppl, bpb, {"val_tokens": int(windows[:, 1:].size), "val_bytes": int(n_bytes)}


def prompt_ids(cfg: EvaluateConfig, name: str, tok: Any, prompt: str) -> list[int]:
    """The pretrained model never saw the chat format: it gets the raw text; the policies a chat prompt."""
    if name == "base":
        return lm.text_prompt_ids(tok, prompt, cfg.max_prompt_tokens)
    return chat_prompt_ids(tok, [{"role": "user", "content": prompt}], cfg.max_prompt_tokens)


def sample_generations(cfg: EvaluateConfig, name: str, model, tok, prompts: list[str]) -> list[dict]:
    """The fixed prompts under each decoding strategy: one row per (model, decoding, prompt)."""
    ids = [prompt_ids(cfg, name, tok, p) for p in prompts]
    rows = []
    for decoding in cfg.decodings:
        gen = lm.decoding_config(
            decoding,
            tok,
            cfg.sample_max_new_tokens,
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            top_p=cfg.top_p,
            num_beams=cfg.num_beams,
            repetition_penalty=cfg.repetition_penalty,
        )
        torch.manual_seed(cfg.seed)
        responses = generate_batched(model, ids, gen, cfg.batch_size)
        for prompt, resp in zip(prompts, responses, strict=True):
            rows.append(
                {
                    "model": name,
                    "decoding": decoding,
                    "repetition_penalty": cfg.repetition_penalty,
                    "prompt": prompt,
                    "response": lm.response_text(tok, resp),
                }
            )
    return rows


# --- the policies on the held-out prompts ----------------------------------------------------------------


def answer_prompts(
    cfg: EvaluateConfig, policies: dict[str, tuple], paths: dict[str, Path], data: EvalData
) -> Answers:
    """Greedy answers of every answering model to the sampled prompts, and the KL(PPO || SFT) sample."""
    (sft, sft_tok), (ppo, ppo_tok) = policies["sft"], policies["ppo"]
    if len(sft_tok) != len(ppo_tok) or sft_tok.eos_token_id != ppo_tok.eos_token_id:
        raise ValueError(
            f"the SFT ({paths['sft']}) and PPO ({paths['ppo']}) tokenizers differ: PPO must start from SFT"
        )
    chat_ids = [chat_prompt_ids(sft_tok, r["prompt"], cfg.max_prompt_tokens) for r in data.rows]
    tokens: dict[str, list[list[int]]] = {}
    texts: dict[str, list[str]] = {}
    for name, (model, tok) in policies.items():
        ids = [prompt_ids(cfg, name, tok, p) for p in data.prompt_texts()] if name == "base" else chat_ids
        greedy = lm.decoding_config("greedy", tok, cfg.max_new_tokens)
        tokens[name] = generate_batched(model, ids, greedy, cfg.batch_size)
        texts[name] = [lm.response_text(tok, r) for r in tokens[name]]
    kls = kl_ppo_sft(cfg, sft, ppo, sft_tok, chat_ids, tokens["ppo"])
    return Answers(tokens, texts, kls)


def kl_ppo_sft(
    cfg: EvaluateConfig, sft, ppo, tok, prompt_ids: list[list[int]], greedy_ppo: list[list[int]]
) -> list[float]:
    """log PPO(y|x) - log SFT(y|x) per response y: KL(PPO || SFT) = E_{y ~ PPO}[...], estimated on
    `kl_samples` sampled PPO responses per prompt (greedy ones are not draws from the policy, and bias the
    estimate upward); on the greedy answers only when `kl_samples` is 0."""
    if cfg.kl_samples:
        torch.manual_seed(cfg.seed)
        kl_prompts = [p for p in prompt_ids for _ in range(cfg.kl_samples)]
        sample = lm.decoding_config("sample", tok, cfg.max_new_tokens)
        kl_resp = generate_batched(ppo, kl_prompts, sample, cfg.batch_size)
    else:
        kl_prompts, kl_resp = prompt_ids, greedy_ppo
    lp_ppo = lm.sequence_logprobs(ppo, kl_prompts, kl_resp, tok.pad_token_id, cfg.batch_size)
    lp_sft = lm.sequence_logprobs(sft, kl_prompts, kl_resp, tok.pad_token_id, cfg.batch_size)
    return [a - b for a, b in zip(lp_ppo, lp_sft, strict=True)]


# --- reference-based scores and the best constant answer -------------------------------------------------


def choose_constants(cfg: EvaluateConfig, data: EvalData) -> dict[str, scores.ConstantAnswer]:
    """Per reference score, the one answer that scores best on the training references: what a policy
    that ignores its prompt could reach, and so the floor a real policy must clear."""
    candidates = scores.constant_candidates(
        GENERIC_ANSWERS, data.train_answers, cfg.constant_common, cfg.constant_sampled, cfg.seed
    )
    chosen = {s: scores.best_constant(s, candidates, data.train_answers) for s in scores.REFERENCE_SCORES}
    for c in chosen.values():
        log.info(
            "evaluate: best constant answer for %s: %r (%.4f on training)", c.score, c.text, c.train_score
        )
    return chosen


def reference_scores(cfg: EvaluateConfig, data: EvalData, answers: Answers) -> References:
    """ROUGE-L and token F1 of every policy's answers, and of each score's constant answer, per prompt."""
    constants = choose_constants(cfg, data)
    refs = data.references()
    table: dict[str, dict[str, list[float]]] = {}
    for score, constant in constants.items():
        table[score] = {name: scores.score_all(score, refs, texts) for name, texts in answers.texts.items()}
        table[score][CONSTANT] = scores.score_all(score, refs, [constant.text] * len(refs))
    return References(constants, table)


def reference_metrics(cfg: EvaluateConfig, refs: References) -> dict[str, float]:
    """Mean scores per policy and for the constant answer; PPO's paired deltas over SFT and over the
    constant answer, with bootstrap intervals."""
    out: dict[str, float] = {}
    for score, by_model in refs.scores.items():
        out.update({f"eval/{score}_{name}": mean(values) for name, values in by_model.items()})
        for other in ("sft", CONSTANT):
            delta = scores.differences(by_model["ppo"], by_model[other])
            out.update(interval(f"eval/{score}_delta_ppo_{other}", delta, cfg))
    return out


# --- diversity ------------------------------------------------------------------------------------------


def diversity_metrics(answers: Answers) -> dict[str, float]:
    """Distinct answers / prompts, distinct-2 and mean answer length per policy: a collapsed policy
    answers most prompts with the same few tokens."""
    out: dict[str, float] = {}
    for name, texts in answers.texts.items():
        out[f"eval/distinct_{name}"] = scores.distinct_rate(texts)
        out[f"eval/distinct2_{name}"] = scores.distinct_n(texts, 2)
        out[f"eval/response_tokens_{name}"] = mean([len(r) for r in answers.tokens[name]])
    return out


def check_finite(metrics: dict[str, float], paths: dict[str, Path]) -> None:
    """A NaN would pass every gate comparison silently (NaN < x is False): fail instead."""
    bad = [k for k, v in metrics.items() if not math.isfinite(v)]
    if bad:
        raise FloatingPointError(f"evaluate produced non-finite metrics {bad}: check the models in {paths}")


# --- files and MLflow artifacts --------------------------------------------------------------------------


def response_rows(
    data: EvalData, answers: Answers, refs: References, judged: Judgement, independent: Judgement
) -> list[dict]:
    """One row per sampled prompt: prompt, reference, each policy's answer with its judge score, policy
    reward-model score and reference scores."""
    prompts, references = data.prompt_texts(), data.references()
    rows = []
    for i, r in enumerate(data.rows):
        row: dict[str, Any] = {
            "id": r.get("id"),
            "module": r.get("module"),
            "prompt": prompts[i],
            "reference": references[i],
        }
        for name, texts in answers.texts.items():
            row[name] = texts[i]
        for name in answers.texts:
            row[f"judge_{name}"] = independent.rewards[name][i]
            row[f"reward_{name}"] = judged.rewards[name][i]
            for score, by_model in refs.scores.items():
                row[f"{score}_{name}"] = by_model[name][i]
        rows.append(row)
    return rows


def write_outputs(
    cfg: EvaluateConfig,
    out: Path,
    log_: MetricLogger,
    metrics: dict[str, float],
    rows: list[dict],
    samples: list[dict],
    answers: Answers,
    judged: Judgement,
    independent: Judgement,
) -> None:
    """`responses.jsonl`, `generations.jsonl`, `metrics.json` and the plots, also logged to MLflow."""
    write_jsonl(out / "responses.jsonl", rows)
    write_jsonl(out / "generations.jsonl", samples)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    log_.log_table(report.columns(samples), "evaluate/generations.json")
    log_.log_table(report.columns(rows), "evaluate/responses.json")
    if cfg.plot:
        prefs = {"chosen": judged.chosen, "rejected": judged.rejected}
        paths = report.plots(out / "plots", metrics, judged.rewards, prefs, answers.kls)
        paths.append(report.independent_plot(out / "plots", metrics, independent.rewards))
        for path in paths:
            log_.log_artifact(path, "evaluate/plots")
