"""The torchrun entry point: one process per rank trains the model on its share of every global batch.

    python -m torch.distributed.run ... -m tasks.pretrain.train --spec run_spec.json --out DIR

`run_spec.json` holds the stage config and the input folders (`tasks/pretrain/launch.py: write_spec`).
Rank 0 writes everything under DIR: checkpoints, `metrics.jsonl`, `samples.jsonl`, `model/` and
`train_summary.json`, and logs metrics to the MLflow run named by $LMFORGE_MLFLOW_RUN_ID. A re-run
resumes from the latest complete checkpoint in DIR (every rank reads it: multi-node runs need DIR on
shared storage). Every rank runs under torchrun's `record`, so an exception it dies of lands in
torchrun's error file for the launcher (`tasks/common/launch.py`) to report.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.elastic.multiprocessing.errors import record

from conf.pretrain import PretrainConfig
from tasks.common.artifacts import atomic_write_text
from tasks.common.jsonl import JsonlWriter
from tasks.common.launch import rank_dies_with_agent
from tasks.common.tokens import read_index
from tasks.common.tracking import MetricLogger, MlflowLogger
from tasks.pretrain import checkpoint as ckpt
from tasks.pretrain.data import (
    GlobalBatches,
    TokenWindows,
    fit_micro_batch,
    micro_batches,
    rank_slice,
    val_indices,
)
from tasks.pretrain.flops import device_peak_flops, flops_per_token
from tasks.pretrain.metrics import MetricSink, truncate_jsonl
from tasks.pretrain.model import ModelDials, build_model, count_params, generation_config, llama_config
from tasks.pretrain.parallel import (
    Dist,
    all_reduce_sum,
    load_state,
    micro_sync,
    param_digest,
    setup,
    state_dicts,
    unwrap,
    wrap,
)

log = logging.getLogger("lmforge.pretrain")
# crash drills: "kill:<rank>:<step>" SIGKILLs that rank after that step, "raise:<rank>:<step>" makes it raise
FAULT_ENV = "LMFORGE_PRETRAIN_FAULT"


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient norm became NaN/inf; training stopped before the bad update."""


def lr_lambda(cfg: PretrainConfig):
    """Linear warmup to the peak, then cosine decay to lr * min_lr_ratio at max_steps."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def make_optimizer(model: torch.nn.Module, cfg: PretrainConfig, d: Dist) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (not on norms)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(
        groups,
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        fused=d.device.type == "cuda" and cfg.parallel == "ddp",
    )


def _first_set(*values):
    return next((v for v in values if v is not None), None)


@dataclass
class Session:
    """What this run of the loop measured (a resumed run counts only its own steps)."""

    total_peak: float
    peak_source: str
    started: float = field(default_factory=time.perf_counter)
    last_loss: float = float("nan")
    val: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    first_done: float = 0.0  # when the first step (the warm-up) ended
    loop_seconds: float = 0.0

    def step_done(self) -> None:
        self.steps += 1
        self.first_done = self.first_done or time.perf_counter()

    def end_loop(self) -> None:
        self.loop_seconds = time.perf_counter() - self.first_done if self.first_done else 0.0

    def tokens_per_s(self, tokens_per_step: int) -> float:
        """Effective throughput: wall clock after the (warm-up) first step, logging, eval and checkpoints
        included."""
        return (self.steps - 1) * tokens_per_step / self.loop_seconds if self.steps > 1 else float("nan")


class Trainer:
    def __init__(self, cfg: PretrainConfig, spec: dict[str, Any], out: Path, d: Dist):
        from transformers import AutoTokenizer

        self.cfg, self.out, self.d = cfg, out, d
        tokens_dir = Path(spec["tokens_dir"])
        self.tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer_dir"])
        index = read_index(tokens_dir)
        tok = self.tokenizer
        vocab = max(len(tok), int(index["vocab_size"]))
        ids = {
            k: _first_set(getattr(tok, f"{k}_token_id", None), index.get(f"{k}_id"))
            for k in ("bos", "eos", "pad")
        }
        dials = ModelDials(
            vocab_size=vocab,
            n_layers=cfg.n_layers,
            d_model=cfg.d_model,
            n_heads=cfg.n_heads,
            n_kv_heads=cfg.n_kv_heads,
            intermediate_size=cfg.ffn_size(),
            seq_len=cfg.seq_len,
            tie_embeddings=cfg.tie_embeddings,
            rope_theta=cfg.rope_theta,
            init_std=cfg.init_std,
        )
        self.hf_config = llama_config(dials, ids["bos"], ids["eos"], ids["pad"])
        raw = build_model(self.hf_config, cfg.seed).to(d.device)
        self.n_params, n_embed = count_params(raw)
        self.flops_per_token = flops_per_token(
            self.n_params, n_embed, cfg.tie_embeddings, cfg.n_layers, cfg.d_model, cfg.seq_len
        )
        self.model = wrap(raw, cfg, d)
        self.optimizer = make_optimizer(self.model, cfg, d)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg))
        self.bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and d.device.type == "cuda")

        self.train = TokenWindows(tokens_dir, "train", cfg.seq_len)
        self.batches = GlobalBatches(len(self.train), cfg.global_batch_seqs, cfg.seed)
        if cfg.global_batch_seqs % d.world:
            raise ValueError(
                f"pretrain.global_batch_tokens={cfg.global_batch_tokens} ({cfg.global_batch_seqs} sequences) "
                f"does not split over {d.world} ranks"
            )
        self.per_rank = cfg.global_batch_seqs // d.world
        self.micro = fit_micro_batch(self.per_rank, cfg.micro_batch_size)
        try:
            self.val = TokenWindows(tokens_dir, "val", cfg.seq_len)
        except KeyError:
            self.val = None
        n_val = min(len(self.val) if self.val else 0, cfg.eval_tokens // cfg.seq_len) // d.world * d.world
        self.val_idx = val_indices(n_val, d.rank, d.world) if n_val else None
        if self.val_idx is None and d.main:
            log.warning(
                "no held-out windows of %d tokens in tokens/val: validation is skipped", cfg.seq_len + 1
            )

        self.ckpt_root = out / ckpt.CHECKPOINT_DIR
        self.step = 0
        self.resumed_from: int | None = None
        self.fault = self._parse_fault()

    # --- state ---------------------------------------------------------------------------------------
    def resume_or_seed(self) -> None:
        if self.d.main:
            for p in ckpt.remove_partial(self.ckpt_root):
                log.info("removed unfinished checkpoint %s", p.name)
        self.barrier()
        found = ckpt.latest_checkpoint(self.ckpt_root)
        seed = self.cfg.seed + self.d.rank
        torch.manual_seed(seed)
        np.random.seed(seed)
        if found is None:
            return
        step, path = found
        state = ckpt.load_checkpoint(path)
        data = state["data"]
        if data["n_windows"] != len(self.train) or data["global_seqs"] != self.cfg.global_batch_seqs:
            raise RuntimeError(
                f"checkpoint {path} was made on other data or batch size ({data}); delete {self.ckpt_root} "
                "to start over"
            )
        load_state(self.model, self.optimizer, state)
        self.scheduler.load_state_dict(state["scheduler"])
        rngs = state["rng"]
        if len(rngs) == self.d.world:
            ckpt.set_rng_state(rngs[self.d.rank])
        self.step = self.resumed_from = int(state["step"])
        if self.d.main:
            log.info("resumed from checkpoint %s (step %d of %d)", path.name, self.step, self.cfg.max_steps)

    def save_checkpoint(self) -> None:
        model_sd, optim_sd = state_dicts(self.model, self.optimizer)
        rngs = [None] * self.d.world
        if self.d.world > 1:
            dist.all_gather_object(rngs, ckpt.rng_state())
        else:
            rngs = [ckpt.rng_state()]
        if self.d.main:
            state = {
                "model": model_sd,
                "optimizer": optim_sd,
                "scheduler": self.scheduler.state_dict(),
                "step": self.step,
                "rng": rngs,
                "data": {
                    "seed": self.cfg.seed,
                    "n_windows": len(self.train),
                    "global_seqs": self.cfg.global_batch_seqs,
                    "samples_seen": self.step * self.cfg.global_batch_seqs,
                },
                "world_size": self.d.world,
            }
            path = ckpt.save_checkpoint(self.ckpt_root, self.step, state, self.cfg.keep_checkpoints)
            log.info("checkpoint %s written", path.name)
        self.barrier()

    def barrier(self) -> None:
        if self.d.world > 1:
            dist.barrier()

    # --- compute ------------------------------------------------------------------------------------
    def autocast(self):
        return torch.autocast(self.d.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def loss_of(self, model, x: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        x = x.to(self.d.device, non_blocking=True)
        y = y.to(self.d.device, non_blocking=True)
        with self.autocast():
            logits = model(input_ids=x, use_cache=False).logits
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1), reduction=reduction)

    def train_step(self) -> tuple[float, float, float]:
        """One optimizer step over this rank's share of the global batch: (loss, grad norm, lr)."""
        idx = rank_slice(self.batches.indices(self.step), self.d.rank, self.d.world)
        parts = micro_batches(idx, self.micro)
        loss_sum = torch.zeros((), device=self.d.device)
        for i, mb in enumerate(parts):
            with micro_sync(self.model, self.cfg, sync=i == len(parts) - 1):
                loss = self.loss_of(self.model, *self.train.batch(mb))
                (loss / len(parts)).backward()
            loss_sum += loss.detach()
        loss_t = all_reduce_sum(loss_sum / len(parts), self.d) / self.d.world
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        loss_v, norm_v = float(loss_t), float(grad_norm)
        lr = self.optimizer.param_groups[0]["lr"]
        if not (math.isfinite(loss_v) and math.isfinite(norm_v)):
            self.optimizer.zero_grad(set_to_none=True)
            last = ckpt.latest_checkpoint(self.ckpt_root)
            kept = f"the last good checkpoint is {last[1]}" if last else "no checkpoint was written yet"
            raise NonFiniteLossError(
                f"non-finite loss or gradient at step {self.step + 1}: loss={loss_v}, grad_norm={norm_v}, "
                f"lr={lr:.3g}; training stopped before applying it ({kept}). Lower pretrain.lr or raise "
                "pretrain.warmup_steps."
            )
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return loss_v, norm_v, lr

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        if self.val_idx is None:
            return {}
        model = self.model if self.cfg.parallel == "fsdp" else unwrap(self.model)
        model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.d.device)
        for mb in micro_batches(self.val_idx, self.micro):
            x, y = self.val.batch(mb)
            total[0] += self.loss_of(model, x, y, reduction="sum").double()
            total[1] += y.numel()
        model.train()
        total = all_reduce_sum(total, self.d)
        loss = float(total[0] / total[1])
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}

    @torch.no_grad()
    def samples(self) -> list[dict[str, Any]]:
        """A few sampled continuations (seeded; the training RNG streams are left untouched)."""
        cfg = self.cfg
        fsdp = cfg.parallel == "fsdp" and self.d.world > 1
        if cfg.sample_tokens == 0 or not cfg.sample_prompts or not (fsdp or self.d.main):
            return []
        model = self.model if fsdp else unwrap(self.model)
        model.eval()
        gen = generation_config(self.hf_config, cfg.sample_tokens)
        gen.temperature, gen.top_k = cfg.sample_temperature, cfg.sample_top_k
        out = []
        devices = [self.d.device] if self.d.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(cfg.seed + self.step)  # the same on every rank: FSDP ranks generate in lockstep
            for prompt in cfg.sample_prompts:
                ids = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids.to(
                    self.d.device
                )
                with self.autocast():
                    seq = model.generate(ids, generation_config=gen, attention_mask=torch.ones_like(ids))
                text = self.tokenizer.decode(seq[0], skip_special_tokens=False)
                out.append({"step": self.step, "prompt": prompt, "text": text})
        model.train()
        return out

    # --- the run ------------------------------------------------------------------------------------
    def _parse_fault(self) -> tuple[str, int, int] | None:
        spec = os.environ.get(FAULT_ENV, "")
        if spec.startswith(("kill:", "raise:")):
            kind, rank, step = spec.split(":")
            return kind, int(rank), int(step)
        return None

    def _maybe_fault(self) -> None:
        if not (self.fault and self.fault[1:] == (self.d.rank, self.step)):
            return
        if self.fault[0] == "raise":
            raise RuntimeError(f"{FAULT_ENV}: rank {self.d.rank} raised after step {self.step}")
        log.warning("%s: killing rank %d after step %d", FAULT_ENV, self.d.rank, self.step)
        os.kill(os.getpid(), signal.SIGKILL)

    def run(self, logger: MetricLogger) -> dict[str, Any]:
        """Train from the latest checkpoint to `max_steps`, save the model; returns the run summary."""
        self.resume_or_seed()
        total_peak, peak_source = self.total_peak_flops()
        sink = self.open_metrics(logger, total_peak, peak_source) if self.d.main else None
        session = Session(total_peak, peak_source)
        while self.step < self.cfg.max_steps:
            self.run_step(session, sink, logger)
        session.end_loop()
        self.record_samples(self.samples(), logger)
        if sink:
            sink.close()
        return self.save_outputs(session)

    def total_peak_flops(self) -> tuple[float, str]:
        """The summed peak FLOP/s of all ranks (a collective) and where this rank's figure came from."""
        peak, source = device_peak_flops(self.d.device, torch.bfloat16 if self.bf16 else torch.float32)
        total = all_reduce_sum(torch.tensor([peak], dtype=torch.float64, device=self.d.device), self.d)
        return float(total[0]), source

    def open_metrics(self, logger: MetricLogger, total_peak: float, peak_source: str) -> MetricSink:
        """Rank 0: drop the metric and sample rows a resumed run writes again, tag the run, log the model."""
        cfg, d = self.cfg, self.d
        sink = MetricSink(self.out / "metrics.jsonl", logger, self.step)
        truncate_jsonl(self.out / "samples.jsonl", self.step)
        logger.set_tags(
            {
                "pretrain.world_size": d.world,
                "pretrain.device": d.device.type,
                "pretrain.peak_flops_source": peak_source,
                "pretrain.resumed_from_step": self.resumed_from,
            }
        )
        logger.log_params(
            {
                "model.n_params": self.n_params,
                "model.vocab_size": self.hf_config.vocab_size,
                "model.flops_per_token": self.flops_per_token,
            }
        )
        log.info(
            "model: %.2fM parameters, %.3g FLOPs/token; %d rank(s) x %d seqs (micro %d) of %d tokens per "
            "step; %d train windows; peak %.3g FLOP/s (%s)",
            self.n_params / 1e6,
            self.flops_per_token,
            d.world,
            self.per_rank,
            self.micro,
            cfg.seq_len,
            len(self.train),
            total_peak,
            peak_source,
        )
        return sink

    def run_step(self, session: Session, sink: MetricSink | None, logger: MetricLogger) -> None:
        """One optimizer step with its metrics, and the evaluation and checkpoint that fall on it."""
        cfg = self.cfg
        t0 = time.perf_counter()
        loss, grad_norm, lr = self.train_step()
        if self.d.device.type == "cuda":
            torch.cuda.synchronize(self.d.device)
        row = self.step_metrics(loss, grad_norm, lr, time.perf_counter() - t0, session.total_peak)
        session.last_loss = loss
        if self.step % cfg.eval_interval == 0 or self.step == cfg.max_steps:
            session.val = self.evaluate()
            row.update(session.val)
        if sink:
            self.log_step(sink, row)
        if self.step % cfg.checkpoint_interval == 0 and self.step < cfg.max_steps:
            self.save_checkpoint()
            self.record_samples(self.samples(), logger)
        self._maybe_fault()
        session.step_done()

    def step_metrics(self, loss: float, grad_norm: float, lr: float, dt: float, total_peak: float) -> dict:
        tokens_per_step = self.cfg.global_batch_tokens
        flops = self.flops_per_token * tokens_per_step / dt
        return {
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_s": tokens_per_step / dt,
            "flops_per_s": flops,
            "mfu": flops / total_peak,
            "epoch": self.batches.epoch_of(self.step),
        }

    def log_step(self, sink: MetricSink, row: dict[str, float]) -> None:
        """Rank 0: every step to the metric stream; a progress line and a flush every `log_interval`."""
        cfg = self.cfg
        sink.add(self.step, row)
        if self.step % cfg.log_interval == 0 or self.step == cfg.max_steps:
            log.info(
                "step %d/%d | loss %.4f | lr %.2e | gnorm %.3f | %.0f tok/s | %.3g FLOP/s | MFU %.1f%%%s",
                self.step,
                cfg.max_steps,
                row["loss"],
                row["lr"],
                row["grad_norm"],
                row["tokens_per_s"],
                row["flops_per_s"],
                100 * row["mfu"],
                f" | val {row['val_loss']:.4f}" if "val_loss" in row else "",
            )
            sink.flush()

    def save_outputs(self, session: Session) -> dict[str, Any]:
        """Check the replicas, save the model (and the final checkpoint if kept), write the summary last."""
        cfg, d = self.cfg, self.d
        digests = self.replica_digests()
        model_sd = self.full_model_state()
        if cfg.keep_final_checkpoint:
            self.save_checkpoint()
        if d.main:
            self.save_model(model_sd)
        summary = self.summary(session, digests)
        if d.main:
            atomic_write_text(self.out / "train_summary.json", json.dumps(summary, indent=2))
            if cfg.keep_final_checkpoint:
                for _, old in ckpt.list_checkpoints(self.ckpt_root)[:-1]:
                    shutil.rmtree(old, ignore_errors=True)
            else:
                shutil.rmtree(self.ckpt_root, ignore_errors=True)
        self.barrier()
        return summary

    def summary(self, session: Session, digests: list[str] | None) -> dict[str, Any]:
        cfg, d = self.cfg, self.d
        tokens_per_s = session.tokens_per_s(cfg.global_batch_tokens)
        return {
            "steps": self.step,
            "tokens": self.step * cfg.global_batch_tokens,
            "final_loss": session.last_loss,
            **session.val,
            "tokens_per_s": tokens_per_s,
            "flops_per_s": tokens_per_s * self.flops_per_token,
            "mfu": tokens_per_s * self.flops_per_token / session.total_peak,
            "peak_flops": session.total_peak,
            "peak_flops_source": session.peak_source,
            "n_params": self.n_params,
            "flops_per_token": self.flops_per_token,
            "vocab_size": self.hf_config.vocab_size,
            "world_size": d.world,
            "micro_batch": self.micro,
            "device": d.device.type,
            "parallel": cfg.parallel if d.world > 1 else "single",
            "resumed_from_step": self.resumed_from,
            "replica_digests": digests,
            "session_seconds": time.perf_counter() - session.started,
            "peak_memory_gib": peak_memory_gib(d.device),
        }

    def replica_digests(self) -> list[str] | None:
        """DDP replicas must hold bit-identical parameters; a mismatch is an error, not a warning."""
        if self.cfg.parallel == "fsdp" and self.d.world > 1:
            return None
        mine = param_digest(self.model)
        digests = [None] * self.d.world
        if self.d.world > 1:
            dist.all_gather_object(digests, mine)
        else:
            digests = [mine]
        if len(set(digests)) != 1:
            raise RuntimeError(f"DDP replicas diverged: parameter digests per rank {digests}")
        return digests

    def full_model_state(self) -> dict[str, torch.Tensor]:
        """The full weights on rank 0 (gathered from the shards under FSDP; a collective then)."""
        if self.cfg.parallel == "fsdp" and self.d.world > 1:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            return get_model_state_dict(
                self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        return unwrap(self.model).state_dict() if self.d.main else {}

    def save_model(self, model_sd: dict[str, torch.Tensor]) -> None:
        """The final weights as a transformers folder (safetensors) with the tokenizer, written atomically."""
        from transformers import LlamaForCausalLM

        with torch.device("meta"):
            final = LlamaForCausalLM(self.hf_config)
        final.load_state_dict({k: v.detach().cpu().float() for k, v in model_sd.items()}, assign=True)
        final.tie_weights()
        final.generation_config = generation_config(self.hf_config)
        tmp, dest = self.out / "model.tmp", self.out / "model"
        shutil.rmtree(tmp, ignore_errors=True)
        final.save_pretrained(tmp, safe_serialization=True)
        self.tokenizer.save_pretrained(tmp)
        shutil.rmtree(dest, ignore_errors=True)
        os.rename(tmp, dest)
        log.info("model saved to %s", dest)

    def record_samples(self, samples: list[dict], logger: MetricLogger) -> None:
        if not (samples and self.d.main):
            return
        with JsonlWriter(self.out / "samples.jsonl", "a") as fh:
            for s in samples:
                fh.write(s)
        text = "\n\n".join(f"[step {s['step']}] {s['prompt']!r}\n{s['text']}" for s in samples)
        try:
            logger.log_text(text, f"samples/step-{self.step:07d}.txt")
        except Exception as e:
            log.warning("could not log samples to MLflow: %s", e)


def peak_memory_gib(device: torch.device) -> float:
    """This rank's peak memory: allocated CUDA memory on a GPU, the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


@record
def main(argv: list[str] | None = None) -> None:
    rank_dies_with_agent()  # a killed pipeline takes its torchrun and ranks down with it
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="run_spec.json written by tasks.pretrain.launch")
    parser.add_argument("--out", required=True, help="the stage folder (rank 0 writes into it)")
    args = parser.parse_args(argv)
    spec = json.loads(Path(args.spec).read_text())
    cfg = PretrainConfig.model_validate(spec["config"])
    out = Path(args.out)
    d = setup(cfg)
    try:
        trainer = Trainer(cfg, spec, out, d)
        logger = MlflowLogger.from_env() if d.main else MetricLogger()
        trainer.run(logger)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # A finished worker skips interpreter teardown: C++ threads left behind by the process group or the
    # thread pools occasionally abort a rank at exit ("terminate called without an active exception",
    # SIGABRT) after a complete run. Every output is already written and closed here.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
