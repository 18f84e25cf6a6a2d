"""The body of the `evaluate` stage (see the package docstring for what it measures)."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from conf.evaluate import EvaluateConfig
from tasks.common.artifacts import Manifest
from tasks.common.data import iter_jsonl
from tasks.common.stage import StageReport
from tasks.common.tokens import INDEX_FILE, open_split
from tasks.common.tracking import MetricLogger
from tasks.evaluate import INPUTS, MODELS, lm, report

log = logging.getLogger(__name__)


def read_jsonl(path: Path, limit: int) -> list[dict]:
    rows = []
    for _, rec in iter_jsonl(path):
        if len(rows) >= limit:
            break
        rows.append(rec)
    if not rows:
        raise ValueError(f"{path} is empty: the align_data stage produced no held-out examples")
    return rows


def content(messages: list[dict], path: Path, key: str) -> str:
    if not isinstance(messages, list) or not messages or "content" not in messages[-1]:
        raise ValueError(f"{path}: field {key!r} must be a list of chat messages, got {messages!r:.80}")
    return messages[-1]["content"]


def run(cfg: EvaluateConfig, inputs: dict[str, Manifest], out: Path, log_: MetricLogger) -> StageReport:
    missing = [k for k in INPUTS if k not in inputs]
    if missing:
        raise ValueError(f"evaluate needs the outputs of {', '.join(INPUTS)}; missing: {', '.join(missing)}")
    if cfg.lm_eval_tasks:
        report.lm_eval_include_folder(cfg)  # a wrong path fails now, not after the generations
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    metrics: dict[str, float] = {}
    data = inputs["align_data"]
    prompts_path, prefs_path = data.file("sft/eval.jsonl"), data.file("prefs/eval.jsonl")
    eval_rows = read_jsonl(prompts_path, cfg.max_prompts)
    pref_rows = read_jsonl(prefs_path, cfg.max_pref_pairs)
    sample_prompts = cfg.sample_prompts or [
        content(r["prompt"], prompts_path, "prompt") for r in eval_rows[:3]
    ]
    samples: list[dict] = []

    # --- perplexity / bits per byte, one model at a time ----------------------------------------------
    tok_m = inputs["tokenizer"]
    tok_m.file(INDEX_FILE)
    shards = open_split(tok_m.dir, "val")
    if not shards:
        raise ValueError(f"stage tokenizer ({tok_m.path}) wrote no validation tokens: perplexity needs some")
    tokens = np.concatenate([np.asarray(a) for a in shards])
    val_tok = lm.load_tokenizer(lm.tokenizer_dir(tok_m), require_chat_template=False)
    paths = {name: lm.model_dir(inputs[stage]) for name, stage in MODELS.items()}
    loaded: dict[str, tuple] = {}
    for name, path in paths.items():
        model, tok = lm.load_lm(path)
        ctx = getattr(model.config, "max_position_embeddings", None) or cfg.block_size + 1
        windows = lm.val_windows(tokens, min(cfg.block_size, ctx - 1), cfg.max_val_tokens)
        n_bytes = lm.predicted_bytes(val_tok, windows)
        ppl, bpb = lm.perplexity_and_bpb(model, windows, n_bytes, cfg.batch_size)
        metrics[f"eval/ppl_{name}"], metrics[f"eval/bpb_{name}"] = ppl, bpb
        log.info(
            "evaluate: %s ppl %.3f, %.4f bits/byte over %d tokens (%d bytes)",
            name,
            ppl,
            bpb,
            windows[:, 1:].size,
            n_bytes,
        )
        if name in cfg.sample_models:
            samples += sample_generations(cfg, name, model, tok, sample_prompts)
        if name != "base":  # the base model is done; SFT and PPO answer the eval prompts next
            loaded[name] = (model, tok)
        del model
    counts = {"val_tokens": int(windows[:, 1:].size), "val_bytes": int(n_bytes)}

    # --- responses to eval prompts ------------------------------------------------------------------
    (sft, sft_tok), (ppo, ppo_tok) = loaded["sft"], loaded["ppo"]
    if len(sft_tok) != len(ppo_tok) or sft_tok.eos_token_id != ppo_tok.eos_token_id:
        raise ValueError(
            f"the SFT ({paths['sft']}) and PPO ({paths['ppo']}) tokenizers differ: PPO must start from SFT"
        )
    prompt_ids = [lm.chat_prompt_ids(sft_tok, r["prompt"], cfg.max_prompt_tokens) for r in eval_rows]
    greedy = lm.decoding_config("greedy", sft_tok, cfg.max_new_tokens)
    resp = {
        name: lm.generate(m, sft_tok, prompt_ids, greedy, cfg.batch_size)
        for name, m in (("sft", sft), ("ppo", ppo))
    }
    texts = {name: [lm.response_text(sft_tok, ids) for ids in r] for name, r in resp.items()}
    references = [content(r["completion"], prompts_path, "completion") for r in eval_rows]
    rouge = lm.Rouge()
    rouges = {name: [rouge(ref, t) for ref, t in zip(references, texts[name], strict=True)] for name in texts}

    # KL(PPO || SFT) = E_{y ~ PPO}[log PPO(y|x) - log SFT(y|x)]: estimated on sampled PPO responses
    # (greedy ones are not draws from the policy, and bias the estimate upward).
    if cfg.kl_samples:
        torch.manual_seed(cfg.seed)
        kl_prompts = [p for p in prompt_ids for _ in range(cfg.kl_samples)]
        kl_resp = lm.generate(
            ppo,
            sft_tok,
            kl_prompts,
            lm.decoding_config("sample", sft_tok, cfg.max_new_tokens),
            cfg.batch_size,
        )
    else:
        kl_prompts, kl_resp = prompt_ids, resp["ppo"]
    lp_ppo = lm.sequence_logprobs(ppo, kl_prompts, kl_resp, sft_tok.pad_token_id, cfg.batch_size)
    lp_sft = lm.sequence_logprobs(sft, kl_prompts, kl_resp, sft_tok.pad_token_id, cfg.batch_size)
    kls = [a - b for a, b in zip(lp_ppo, lp_sft, strict=True)]
    del sft, ppo, loaded

    # --- reward model: scores, win rate, accuracy on held-out pairs ------------------------------------
    rm, rm_tok = lm.load_reward_model(lm.model_dir(inputs["reward"]))
    score = lambda convs: lm.reward_scores(rm, rm_tok, convs, cfg.max_rm_tokens, cfg.batch_size)  # noqa: E731
    rewards = {
        name: score(
            [
                r["prompt"] + [{"role": "assistant", "content": t}]
                for r, t in zip(eval_rows, texts[name], strict=True)
            ]
        )
        for name in texts
    }
    chosen = score([r["prompt"] + r["chosen"] for r in pref_rows])
    rejected = score([r["prompt"] + r["rejected"] for r in pref_rows])

    wins = [
        1.0 if p > s else 0.5 if p == s else 0.0 for p, s in zip(rewards["ppo"], rewards["sft"], strict=True)
    ]

    metrics.update(
        {
            "eval/rouge_l_sft": mean(rouges["sft"]),
            "eval/rouge_l_ppo": mean(rouges["ppo"]),
            "eval/rm_accuracy": mean([float(c > r) for c, r in zip(chosen, rejected, strict=True)]),
            "eval/reward_sft": mean(rewards["sft"]),
            "eval/reward_ppo": mean(rewards["ppo"]),
            "eval/win_rate_ppo_vs_sft": mean(wins),
            "eval/kl_ppo_sft": mean(kls),
            "eval/rm_margin": mean([c - r for c, r in zip(chosen, rejected, strict=True)]),
            "eval/response_tokens_sft": mean([len(r) for r in resp["sft"]]),
            "eval/response_tokens_ppo": mean([len(r) for r in resp["ppo"]]),
        }
    )
    bad = [k for k, v in metrics.items() if not math.isfinite(v)]
    if bad:
        raise FloatingPointError(f"evaluate produced non-finite metrics {bad}: check the models in {paths}")
    counts.update(
        {
            "eval_prompts": len(eval_rows),
            "pref_pairs": len(pref_rows),
            "kl_samples": len(kls),
            "sample_generations": len(samples),
        }
    )

    # --- optional lm-evaluation-harness ---------------------------------------------------------------
    if cfg.lm_eval_tasks:
        metrics.update(report.run_lm_eval(cfg, {m: paths[m] for m in cfg.lm_eval_models}, str(lm.device())))

    # --- files and MLflow artifacts --------------------------------------------------------------------
    rows = [
        {
            "id": r.get("id"),
            "prompt": content(r["prompt"], prompts_path, "prompt"),
            "reference": ref,
            "sft": texts["sft"][i],
            "ppo": texts["ppo"][i],
            "reward_sft": rewards["sft"][i],
            "reward_ppo": rewards["ppo"][i],
            "rouge_l_sft": rouges["sft"][i],
            "rouge_l_ppo": rouges["ppo"][i],
        }
        for i, (r, ref) in enumerate(zip(eval_rows, references, strict=True))
    ]
    report.write_jsonl(out / "responses.jsonl", rows)
    report.write_jsonl(out / "generations.jsonl", samples)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    log_.log_table(report.columns(samples), "evaluate/generations.json")
    log_.log_table(report.columns(rows), "evaluate/responses.json")
    if cfg.plot:
        for path in report.plots(
            out / "plots", metrics, rewards, {"chosen": chosen, "rejected": rejected}, kls
        ):
            log_.log_artifact(path, "evaluate/plots")
    log.info("evaluate: %s", ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    return StageReport(
        counts=counts,
        metrics=metrics,
        extra={
            "device": report.hardware(),
            "seconds_measured": round(time.perf_counter() - started, 3),
            "sample_prompts": sample_prompts,
            "decodings": list(cfg.decodings),
        },
    )


def mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def sample_generations(cfg: EvaluateConfig, name: str, model, tok, prompts: list[str]) -> list[dict]:
    """The fixed prompts under each decoding strategy: one row per (model, decoding, prompt)."""
    if name == "base":  # the pretrained model never saw the chat format: give it the raw text
        ids = [lm.text_prompt_ids(tok, p, cfg.max_prompt_tokens) for p in prompts]
    else:
        ids = [
            lm.chat_prompt_ids(tok, [{"role": "user", "content": p}], cfg.max_prompt_tokens) for p in prompts
        ]
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
        for prompt, resp in zip(prompts, lm.generate(model, tok, ids, gen, cfg.batch_size), strict=True):
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
