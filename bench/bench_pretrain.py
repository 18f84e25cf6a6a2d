"""Pretrain bench: tokens/s and achieved FLOP/s of the pretrain stage against a plain single-process loop.

Both train the same model (the `tiny` preset's Llama: 4 layers, width 128, 256-token sequences) on the
same token shards with the same global batch, optimizer, schedule and gradient clipping, with the same
CPU threads: one per process (a 2-thread OpenMP team slows down several-fold whenever anything else
runs on a 2-core machine, which would swamp the comparison).
- lmforge: the stage function as the pipeline calls it: torchrun launch, memory-mapped loader with
  the rank-independent batch order, per-step loss all-reduce and NaN check, metrics to a real MLflow
  run (SQLite) and `metrics.jsonl`, final eval, samples and model save. Its throughput is the worker's
  own wall clock over every step after the first (logging included); start-up is reported separately.
- baseline: nanoGPT's loop in this process: random offsets into one memmap, `torch.stack`, forward,
  backward, clip, AdamW step; nothing logged.
The goal: orchestration, logging and data loading cost under 5% (`overhead` column). A 2-process DDP
row shows what the machine's two cores give with the stage's default launch.

A second pair runs the issue-14 size, 4 layers x width 256, 256-token sequences, micro batch 8, one
process with 2 threads (`--wide-threads`), where the target is the plain loop's FLOP/s within 3%
(`overhead` <= 3%). Every pair alternates stage and loop `--runs` times, so machine noise hits both.

    .venv/bin/python -m bench.bench_pretrain [--steps 40] [--runs 2] [--wide-runs 3] [--only wide]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.common import Measurement, row, save
from conf.collect import PydocsSource
from conf.pretrain import PretrainConfig
from tasks.collect import SourceStats, pydocs_documents
from tasks.common.testing import seal
from tasks.common.tokens import TokenShardWriter, open_split
from tasks.common.tracking import Tracker

THREADS = 1  # see the module docstring


def build_input(root: Path, n_docs: int = 4000, vocab: int = 4096):
    """A tokenizer-like folder from the pydocs corpus: byte-level BPE + train/val shards."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [d.text for d in pydocs_documents(PydocsSource(max_docs=n_docs), SourceStats())][:n_docs]
    folder = root / "tokenizer" / "bench"
    specials = ["<|bos|>", "<|eos|>", "<|pad|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=vocab, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=specials[0],
        eos_token=specials[1],
        pad_token=specials[2],
        model_max_length=1024,
    )
    tok.save_pretrained(folder / "tokenizer")
    w = TokenShardWriter(
        folder, vocab_size=len(tok), eos_id=tok.eos_token_id, bos_id=tok.bos_token_id, pad_id=tok.pad_token_id
    )
    for i, ids in enumerate(tok(texts).input_ids):
        w.write("val" if i % 20 == 0 else "train", ids + [tok.eos_token_id])
    w.close()
    return seal(folder, "tokenizer"), len(tok)


def stage_run(cfg: PretrainConfig, source, root: Path, tracker: Tracker) -> dict:
    from tasks.pretrain import pretrain

    out = Path(tempfile.mkdtemp(dir=root, prefix="stage-"))
    logger = tracker.start_stage(tracker.start_pipeline("bench", {}, {}).run_id, "pretrain", "bench", {}, {})
    t0 = time.perf_counter()
    pretrain(cfg, {"tokenizer": source}, out, logger)
    wall = time.perf_counter() - t0
    tracker.end(logger)
    summary = json.loads((out / "train_summary.json").read_text())
    timed_tokens = (summary["steps"] - 1) * cfg.global_batch_tokens
    return {
        "seconds": timed_tokens / summary["tokens_per_s"],
        "tokens": timed_tokens,
        "wall": wall,
        "final_loss": summary["final_loss"],
        "flops_per_token": summary["flops_per_token"],
        "peak_flops": summary["peak_flops"],
    }


def plain_loop(cfg: PretrainConfig, source, vocab: int) -> dict:
    """nanoGPT-style: one process, random windows from a memmap, no logging, no framework."""
    from tasks.pretrain.model import ModelDials, build_model, llama_config
    from tasks.pretrain.train import lr_lambda

    torch.set_num_threads(cfg.threads_per_proc or THREADS)
    data = open_split(source.dir, "train")[0]
    dials = ModelDials(
        vocab, cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.ffn_size(), cfg.seq_len
    )
    model = build_model(llama_config(dials, 0, 1, 2), cfg.seed)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0}],
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    gen = torch.Generator().manual_seed(cfg.seed)
    T, B, micro = cfg.seq_len, cfg.global_batch_seqs, min(cfg.micro_batch_size, cfg.global_batch_seqs)
    accum = B // micro
    first_done, loss = 0.0, torch.zeros(())
    for step in range(cfg.max_steps):
        for _ in range(accum):
            ix = torch.randint(len(data) - T - 1, (micro,), generator=gen)
            xy = torch.stack([torch.from_numpy(data[i : i + T + 1].astype(np.int64)) for i in ix.tolist()])
            logits = model(input_ids=xy[:, :-1], use_cache=False).logits
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), xy[:, 1:].reshape(-1))
            (loss / accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step == 0:
            first_done = time.perf_counter()
    seconds = time.perf_counter() - first_done
    return {
        "seconds": seconds,
        "tokens": (cfg.max_steps - 1) * cfg.global_batch_tokens,
        "final_loss": float(loss.detach()),
    }


def measurement(name: str, runs: list[dict]) -> Measurement:
    tokens = runs[0]["tokens"]
    return Measurement(name, [r["seconds"] for r in runs], tokens, "tokens", 0.0)


def compare(name: str, cfg: PretrainConfig, source, vocab: int, root: Path, tracker: Tracker, runs: int):
    """The stage and the plain loop on `cfg`, alternated `runs` times: (row, stage runs, loop runs)."""
    ours, plain = [], []
    for _ in range(runs):  # alternate, so machine noise hits both sides
        ours.append(stage_run(cfg, source, root, tracker))
        plain.append(plain_loop(cfg, source, vocab))
    fpt, peak = ours[0]["flops_per_token"], ours[0]["peak_flops"]
    a, b = measurement("lmforge", ours), measurement("plain loop", plain)
    overhead = 1 - a.rate / b.rate
    if not math.isfinite(overhead):
        raise RuntimeError("bench produced no throughput")
    wall = statistics.median(r["wall"] for r in ours)
    return (
        row(
            name,
            a,
            b,
            overhead=f"{overhead:.1%}",
            ours_flops_per_s=f"{a.rate * fpt:.3g}",
            baseline_flops_per_s=f"{b.rate * fpt:.3g}",
            ours_mfu=f"{a.rate * fpt / peak:.1%}",
            stage_wall_s=round(wall, 1),
            startup_s=round(wall - a.median_s, 1),
            per_run_tokens_per_s={
                "lmforge": [round(r["tokens"] / r["seconds"]) for r in ours],
                "plain": [round(r["tokens"] / r["seconds"]) for r in plain],
            },
        ),
        ours,
        plain,
    )


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--wide-runs", type=int, default=3, help="alternations of the width-256 pair")
    p.add_argument("--wide-threads", type=int, default=2)
    p.add_argument("--only", choices=["tiny", "wide"], help="run one pair only")
    args = p.parse_args(argv or [])
    base = dict(
        max_steps=args.steps,
        warmup_steps=min(30, args.steps // 4),
        eval_interval=args.steps,
        eval_tokens=4096,
        checkpoint_interval=args.steps,
        sample_tokens=16,
        log_interval=10,
    )
    single = PretrainConfig(**base, nproc_per_node=1, threads_per_proc=THREADS)
    ddp = PretrainConfig(**base, nproc_per_node=2, threads_per_proc=1)
    wide = PretrainConfig(
        **base,
        n_layers=4,
        d_model=256,
        n_heads=4,
        seq_len=256,
        micro_batch_size=8,
        global_batch_tokens=4096,
        nproc_per_node=1,
        threads_per_proc=args.wide_threads,
    )
    rows, details = [], {"threads": THREADS, "wide_threads": args.wide_threads, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="bench-pretrain-") as tmp:
        root = Path(tmp)
        source, vocab = build_input(root)
        tracker = Tracker(f"sqlite:///{root / 'mlflow.db'}", "bench-pretrain")
        if args.only in (None, "tiny"):
            r, ours, plain = compare(
                "pretrain_1proc_vs_plain_loop", single, source, vocab, root, tracker, args.runs
            )
            two = [stage_run(ddp, source, root, tracker)]
            c = measurement("lmforge ddp", two)
            fpt = ours[0]["flops_per_token"]
            rows += [
                r,
                row(
                    "pretrain_2proc_ddp_vs_plain_loop",
                    c,
                    measurement("plain loop", plain),
                    ours_flops_per_s=f"{c.rate * fpt:.3g}",
                    stage_wall_s=round(two[0]["wall"], 1),
                ),
            ]
            details["config"] = single.model_dump(mode="json")
            details["flops_per_token"] = fpt
            details["runs"].update({"lmforge": ours, "plain": plain, "lmforge_ddp": two})
        if args.only in (None, "wide"):
            name = f"pretrain_w256_{args.wide_threads}threads_vs_plain_loop"
            r, ours, plain = compare(name, wide, source, vocab, root, tracker, args.wide_runs)
            rows.append(r)
            details["wide_config"] = wide.model_dump(mode="json")
            details["runs"].update({"wide_lmforge": ours, "wide_plain": plain})
    details["load_1m_at_end"] = round(os.getloadavg()[0], 2)
    details["note"] = (
        "throughput over every step after the first; start-up = stage wall clock minus that loop"
    )
    return save("pretrain", rows, details)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
