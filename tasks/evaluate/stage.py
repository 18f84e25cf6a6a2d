"""The body of the `evaluate` stage (see the package docstring for what it measures), one step a function:
perplexity of each model (and its sample generations), SFT's and PPO's answers to the eval prompts with
the KL between the two policies, the reward model's judgement, then the files.

Models are loaded one at a time and dropped when their step is done, so the stage needs the memory of
two policies at most, and the reward model only after them.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conf.evaluate import EvaluateConfig
from tasks.common.alignment import PREF_FILES, SFT_FILES
from tasks.common.artifacts import Manifest
from tasks.common.generation import chat_prompt_ids, generate_batched
from tasks.common.jsonl import iter_jsonl, write_jsonl
from tasks.common.models import device, load_causal_lm, load_tokenizer, model_dir, tokenizer_dir
from tasks.common.reward_model import RewardModelScorer, load_reward_model, with_answers
from tasks.common.stage import StageReport
from tasks.common.tokens import INDEX_FILE, open_split
from tasks.common.tracking import MetricLogger
from tasks.evaluate import INPUTS, MODELS, lm, report

log = logging.getLogger(__name__)


@dataclass
class EvalData:
    """The held-out rows of align_data this stage reads."""

    prompts_path: Path
    rows: list[dict]  # sft/eval.jsonl: prompt + reference completion
    pairs: list[dict]  # prefs/eval.jsonl: prompt + chosen + rejected
    sample_prompts: list[str]  # the decoding table's prompts

    def prompt_texts(self) -> list[str]:
        return [content(r["prompt"], self.prompts_path, "prompt") for r in self.rows]

    def references(self) -> list[str]:
        return [content(r["completion"], self.prompts_path, "completion") for r in self.rows]


@dataclass
class Answers:
    """SFT's and PPO's greedy answers to the eval prompts (token ids and text, by model name), their
    ROUGE-L against the references, and the per-response log PPO - log SFT of the KL estimate."""

    tokens: dict[str, list[list[int]]]
    texts: dict[str, list[str]]
    rouges: dict[str, list[float]]
    kls: list[float]


@dataclass
class Judgement:
    """Reward-model scores: of each model's answers (by model name) and of the held-out pairs."""

    rewards: dict[str, list[float]]
    chosen: list[float]
    rejected: list[float]


def run(cfg: EvaluateConfig, inputs: dict[str, Manifest], out: Path, log_: MetricLogger) -> StageReport:
    check_inputs(cfg, inputs)
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    data = read_eval_data(cfg, inputs["align_data"])
    tokens, val_tok = read_val_tokens(inputs["tokenizer"])
    paths = {name: model_dir(inputs[stage]) for name, stage in MODELS.items()}
    metrics, counts, samples, policies = measure_models(cfg, paths, tokens, val_tok, data.sample_prompts)
    answers = answer_prompts(cfg, policies, paths, data)
    del policies  # the reward model loads next
    judged = judge(cfg, model_dir(inputs["reward"]), data, answers)
    metrics.update(alignment_metrics(answers, judged))
    check_finite(metrics, paths)
    counts.update(
        {
            "eval_prompts": len(data.rows),
            "pref_pairs": len(data.pairs),
            "kl_samples": len(answers.kls),
            "sample_generations": len(samples),
        }
    )
    if cfg.lm_eval_tasks:
        metrics.update(report.run_lm_eval(cfg, {m: paths[m] for m in cfg.lm_eval_models}, str(device())))
    write_outputs(cfg, out, log_, metrics, response_rows(data, answers, judged), samples, answers, judged)
    log.info("evaluate: %s", ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    return StageReport(
        counts=counts,
        metrics=metrics,
        extra={
            "device": report.hardware(),
            "seconds_measured": round(time.perf_counter() - started, 3),
            "sample_prompts": data.sample_prompts,
            "decodings": list(cfg.decodings),
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


def read_rows(path: Path, limit: int) -> list[dict]:
    """The first `limit` records of a held-out JSONL file; an empty file is an upstream error."""
    rows = [rec for _, rec in itertools.islice(iter_jsonl(path), limit)]
    if not rows:
        raise ValueError(f"{path} is empty: the align_data stage produced no held-out examples")
    return rows


def content(messages: list[dict], path: Path, key: str) -> str:
    """The text of the last chat message of a row's field (`prompt`, `completion`), checked."""
    if not isinstance(messages, list) or not messages or "content" not in messages[-1]:
        raise ValueError(f"{path}: field {key!r} must be a list of chat messages, got {messages!r:.80}")
    return messages[-1]["content"]


def read_eval_data(cfg: EvaluateConfig, align: Manifest) -> EvalData:
    prompts_path = align.file(SFT_FILES["eval"])
    rows = read_rows(prompts_path, cfg.max_prompts)
    pairs = read_rows(align.file(PREF_FILES["eval"]), cfg.max_pref_pairs)
    sample_prompts = cfg.sample_prompts or [content(r["prompt"], prompts_path, "prompt") for r in rows[:3]]
    return EvalData(prompts_path, rows, pairs, sample_prompts)


def read_val_tokens(tok_stage: Manifest) -> tuple[np.ndarray, Any]:
    """The tokenizer stage's validation tokens, and the tokenizer that decodes them (for bits per byte)."""
    tok_stage.file(INDEX_FILE)
    shards = open_split(tok_stage.dir, "val")
    if not shards:
        raise ValueError(
            f"stage tokenizer ({tok_stage.path}) wrote no validation tokens: perplexity needs some"
        )
    tokens = np.concatenate([np.asarray(a) for a in shards])
    return tokens, load_tokenizer(tokenizer_dir(tok_stage), require_chat_template=False)


# --- perplexity and sample generations, one model at a time ----------------------------------------------


def measure_models(
    cfg: EvaluateConfig, paths: dict[str, Path], tokens: np.ndarray, val_tok: Any, sample_prompts: list[str]
) -> tuple[dict[str, float], dict[str, int], list[dict], dict[str, tuple]]:
    """(metrics, counts, sample generations, {"sft"/"ppo": (model, tokenizer)}): perplexity and bits per
    byte of every model, its decoding table if asked for; SFT and PPO stay loaded for the answers."""
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
        if name != "base":  # the base model is done; SFT and PPO answer the eval prompts next
            policies[name] = (model, tok)
        del model
    return metrics, counts, samples, policies


def perplexity(
    cfg: EvaluateConfig, name: str, model: Any, tokens: np.ndarray, val_tok: Any
) -> tuple[float, float, dict[str, int]]:
    """(perplexity, bits per byte, counts of what was scored) over windows that fit the model's context."""
    ctx = getattr(model.config, "max_position_embeddings", None) or cfg.block_size + 1
    windows = lm.val_windows(tokens, min(cfg.block_size, ctx - 1), cfg.max_val_tokens)
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


def sample_generations(cfg: EvaluateConfig, name: str, model, tok, prompts: list[str]) -> list[dict]:
    """The fixed prompts under each decoding strategy: one row per (model, decoding, prompt)."""
    if name == "base":  # the pretrained model never saw the chat format: give it the raw text
        ids = [lm.text_prompt_ids(tok, p, cfg.max_prompt_tokens) for p in prompts]
    else:
        ids = [chat_prompt_ids(tok, [{"role": "user", "content": p}], cfg.max_prompt_tokens) for p in prompts]
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


# --- SFT and PPO on the eval prompts ---------------------------------------------------------------------


def answer_prompts(
    cfg: EvaluateConfig, policies: dict[str, tuple], paths: dict[str, Path], data: EvalData
) -> Answers:
    """Greedy answers of SFT and PPO to the eval prompts, their ROUGE-L, and the KL(PPO || SFT) sample."""
    (sft, sft_tok), (ppo, ppo_tok) = policies["sft"], policies["ppo"]
    if len(sft_tok) != len(ppo_tok) or sft_tok.eos_token_id != ppo_tok.eos_token_id:
        raise ValueError(
            f"the SFT ({paths['sft']}) and PPO ({paths['ppo']}) tokenizers differ: PPO must start from SFT"
        )
    prompt_ids = [chat_prompt_ids(sft_tok, r["prompt"], cfg.max_prompt_tokens) for r in data.rows]
    greedy = lm.decoding_config("greedy", sft_tok, cfg.max_new_tokens)
    tokens = {
        name: generate_batched(m, prompt_ids, greedy, cfg.batch_size)
        for name, m in (("sft", sft), ("ppo", ppo))
    }
    texts = {name: [lm.response_text(sft_tok, ids) for ids in r] for name, r in tokens.items()}
    references = data.references()
    rouge = lm.Rouge()
    rouges = {name: [rouge(ref, t) for ref, t in zip(references, texts[name], strict=True)] for name in texts}
    kls = kl_ppo_sft(cfg, sft, ppo, sft_tok, prompt_ids, tokens["ppo"])
    return Answers(tokens, texts, rouges, kls)


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


# --- the reward model's judgement ------------------------------------------------------------------------


def judge(cfg: EvaluateConfig, reward_dir: Path, data: EvalData, answers: Answers) -> Judgement:
    """Reward-model scores of each model's answers and of the held-out chosen/rejected pairs, read as the
    reward stage and PPO read them."""
    tok = load_tokenizer(reward_dir)
    model = load_reward_model(reward_dir, tok).to(device())
    scorer = RewardModelScorer(model, tok, cfg.max_rm_tokens, cfg.batch_size)
    prompts = [r["prompt"] for r in data.rows]
    rewards = {name: scorer.score(with_answers(prompts, texts)) for name, texts in answers.texts.items()}
    chosen = scorer.score([r["prompt"] + r["chosen"] for r in data.pairs])
    rejected = scorer.score([r["prompt"] + r["rejected"] for r in data.pairs])
    return Judgement(rewards, chosen, rejected)


def alignment_metrics(answers: Answers, judged: Judgement) -> dict[str, float]:
    """ROUGE, reward, PPO's win rate over SFT (ties count half), KL and reward-model accuracy."""
    rewards, chosen, rejected = judged.rewards, judged.chosen, judged.rejected
    wins = [
        1.0 if p > s else 0.5 if p == s else 0.0 for p, s in zip(rewards["ppo"], rewards["sft"], strict=True)
    ]
    return {
        "eval/rouge_l_sft": mean(answers.rouges["sft"]),
        "eval/rouge_l_ppo": mean(answers.rouges["ppo"]),
        "eval/rm_accuracy": mean([float(c > r) for c, r in zip(chosen, rejected, strict=True)]),
        "eval/reward_sft": mean(rewards["sft"]),
        "eval/reward_ppo": mean(rewards["ppo"]),
        "eval/win_rate_ppo_vs_sft": mean(wins),
        "eval/kl_ppo_sft": mean(answers.kls),
        "eval/rm_margin": mean([c - r for c, r in zip(chosen, rejected, strict=True)]),
        "eval/response_tokens_sft": mean([len(r) for r in answers.tokens["sft"]]),
        "eval/response_tokens_ppo": mean([len(r) for r in answers.tokens["ppo"]]),
    }


def check_finite(metrics: dict[str, float], paths: dict[str, Path]) -> None:
    """A NaN would pass every gate comparison silently (NaN < x is False): fail instead."""
    bad = [k for k, v in metrics.items() if not math.isfinite(v)]
    if bad:
        raise FloatingPointError(f"evaluate produced non-finite metrics {bad}: check the models in {paths}")


def mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


# --- files and MLflow artifacts --------------------------------------------------------------------------


def response_rows(data: EvalData, answers: Answers, judged: Judgement) -> list[dict]:
    """One row per eval prompt: the prompt, the reference, both answers with their reward and ROUGE-L."""
    texts, rewards, rouges = answers.texts, judged.rewards, answers.rouges
    prompts, references = data.prompt_texts(), data.references()
    return [
        {
            "id": r.get("id"),
            "prompt": prompts[i],
            "reference": references[i],
            "sft": texts["sft"][i],
            "ppo": texts["ppo"][i],
            "reward_sft": rewards["sft"][i],
            "reward_ppo": rewards["ppo"][i],
            "rouge_l_sft": rouges["sft"][i],
            "rouge_l_ppo": rouges["ppo"][i],
        }
        for i, r in enumerate(data.rows)
    ]


def write_outputs(
    cfg: EvaluateConfig,
    out: Path,
    log_: MetricLogger,
    metrics: dict[str, float],
    rows: list[dict],
    samples: list[dict],
    answers: Answers,
    judged: Judgement,
) -> None:
    """`responses.jsonl`, `generations.jsonl`, `metrics.json` and the plots, also logged to MLflow."""
    write_jsonl(out / "responses.jsonl", rows)
    write_jsonl(out / "generations.jsonl", samples)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    log_.log_table(report.columns(samples), "evaluate/generations.json")
    log_.log_table(report.columns(rows), "evaluate/responses.json")
    if cfg.plot:
        prefs = {"chosen": judged.chosen, "rejected": judged.rejected}
        for path in report.plots(out / "plots", metrics, judged.rewards, prefs, answers.kls):
            log_.log_artifact(path, "evaluate/plots")
