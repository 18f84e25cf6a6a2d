"""The RLHF-PPO loop on torch + transformers + peft + accelerate.

policy      = SFT model + a fresh LoRA adapter (trainable)
reference   = the same model with the adapter disabled (no second copy of the weights)
value model = a copy of the reward model, whose score head reads every hidden state (trainable)
reward      = score of the finished text - missing-EOS penalty,
              minus kl_coef * KL(policy || reference) per token

The policy's log-probs (stored at rollout, recomputed in the update) are those of the distribution the
rollouts are sampled from: temperature, then top-k / top-p as `generate` applies them. The reference's
are the unfiltered (temperature-scaled) SFT distribution, so the KL penalty is the sampling policy's real
divergence from the SFT model (a token the filter keeps always has a finite reference log-prob).

Each step: sample a rollout batch, compute log-probs / reference log-probs / values / scores, shape
rewards, GAE, whiten advantages, then `ppo_epochs` passes of clipped policy + value updates over
shuffled minibatches. Batch sizes in the config are global; each process takes its share.
"""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from collections.abc import Sequence

import torch
from accelerate import Accelerator

from conf.ppo import PpoConfig
from tasks.common.generation import (
    Messages,
    filter_logits,
    generate,
    generation_config,
    left_pad,
    response_mask,
)
from tasks.common.tracking import MetricLogger
from tasks.ppo import core
from tasks.ppo.rollout import (
    Rollout,
    ScoreFn,
    TokenValueModel,
    behaviour_logprobs,
    prompt_ids,
    response_logits,
    response_tokens,
    response_values,
)

_log = logging.getLogger(__name__)


def make_accelerator() -> Accelerator:
    """CPU-only when there is no GPU; under torchrun it picks up the process group (gloo or NCCL)."""
    return Accelerator(cpu=not torch.cuda.is_available())


def disable_dropout(model: torch.nn.Module) -> None:
    """Dropout would make rollout and update log-probs disagree for the same tokens."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def select_prompts(
    tokenizer, prompts: Sequence[Messages], max_tokens: int
) -> tuple[list[Messages], list[list[int]]]:
    """Prompts whose rendered template fits in `max_tokens`, with their token ids."""
    ids = prompt_ids(tokenizer, prompts)
    kept = [(p, i) for p, i in zip(prompts, ids, strict=True) if 0 < len(i) <= max_tokens]
    return [p for p, _ in kept], [i for _, i in kept]


def sampling_config(cfg: PpoConfig, tokenizer, do_sample: bool = True):
    """How the policy answers: PPO's rollouts sample; the held-out comparison follows `eval_do_sample`."""
    return generation_config(
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
        cfg.max_new_tokens,
        do_sample=do_sample,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
    )


def local_batch_sizes(cfg: PpoConfig, world: int) -> tuple[int, int]:
    """(rollout batch, minibatch) per process: the config's sizes are global and must split evenly."""
    local_batch, local_mini = cfg.batch_size // world, cfg.mini_batch_size // world
    if local_batch < 1 or local_mini < 1 or cfg.batch_size % world or cfg.mini_batch_size % world:
        raise ValueError(
            f"ppo.batch_size ({cfg.batch_size}) and ppo.mini_batch_size ({cfg.mini_batch_size}) must be "
            f"multiples of the number of processes ({world})"
        )
    return local_batch, local_mini


def kl_controller(cfg: PpoConfig) -> core.FixedKLController | core.AdaptiveKLController:
    """The KL coefficient; adaptive (Ziegler et al.) keeps the policy near a KL target at any reward scale,
    over a horizon the run can actually reach (`PpoConfig.kl_horizon_episodes`)."""
    return (
        core.AdaptiveKLController(cfg.init_kl_coef, cfg.kl_target, cfg.kl_horizon_episodes())
        if cfg.adaptive_kl
        else core.FixedKLController(cfg.init_kl_coef)
    )


def optimizer(cfg: PpoConfig, policy_params: list, value_params: list) -> tuple:
    """(AdamW with one learning rate per model, its linear anneal to 0 over `cfg.steps`).

    The schedule is not passed to accelerate, which would step it once per process.
    """
    opt = torch.optim.AdamW(
        [
            {"params": policy_params, "lr": cfg.learning_rate},
            {"params": value_params, "lr": cfg.value_learning_rate},
        ],
        eps=1e-5,
    )
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / cfg.steps))


class PPOTrainer:
    """PPO over a LoRA policy and a value model (see the module docstring); `train()` runs it."""

    def __init__(
        self,
        cfg: PpoConfig,
        policy,  # peft.PeftModel with one trainable LoRA adapter
        tokenizer,
        value_model,  # AutoModelForSequenceClassification (num_labels=1), usually the reward model's copy
        score_fn: ScoreFn,
        prompts: Sequence[Messages],
        log: MetricLogger | None = None,
        accelerator: Accelerator | None = None,
    ):
        self.cfg = cfg
        self.acc = accelerator or make_accelerator()
        self.tok = tokenizer
        self.log = log or MetricLogger()
        self.score_fn = score_fn
        self.eos_id, self.pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
        if self.eos_id is None or self.pad_id is None:
            raise ValueError("the policy tokenizer needs both eos_token and pad_token set")
        self.gen = sampling_config(cfg, tokenizer)
        self.local_batch, self.local_mini = local_batch_sizes(cfg, self.acc.num_processes)
        self.prompts, self.prompt_ids = self._training_prompts(prompts)
        if not isinstance(value_model, TokenValueModel):
            value_model = TokenValueModel(value_model)
        for m in (policy, value_model):
            disable_dropout(m)
            m.train()
        self.policy_params = [p for p in policy.parameters() if p.requires_grad]
        self.value_params = [p for p in value_model.parameters() if p.requires_grad]
        if not self.policy_params:
            raise ValueError("the policy has no trainable parameters (expected a LoRA adapter)")
        opt, self.sched = optimizer(cfg, self.policy_params, self.value_params)
        self.policy, self.value_model, self.opt = self.acc.prepare(policy, value_model, opt)
        self.kl_ctl = kl_controller(cfg)
        self._order: list[int] = []
        self._rng = random.Random(cfg.seed)
        self.history: list[dict[str, float]] = []

    def _training_prompts(self, prompts: Sequence[Messages]) -> tuple[list[Messages], list[list[int]]]:
        """The prompts that fit `max_prompt_tokens`, with their ids; none fitting is a config error."""
        cfg = self.cfg
        kept, ids = select_prompts(self.tok, prompts, cfg.max_prompt_tokens)
        if not kept:
            raise ValueError(
                f"none of the {len(prompts)} training prompts fits "
                f"ppo.max_prompt_tokens={cfg.max_prompt_tokens}"
            )
        _log.info(
            "ppo: %d of %d training prompts fit %d tokens", len(kept), len(prompts), cfg.max_prompt_tokens
        )
        return kept, ids

    @property
    def device(self) -> torch.device:
        return self.acc.device

    def unwrapped_policy(self):
        return self.acc.unwrap_model(self.policy)

    # ---- data -------------------------------------------------------------------------------
    def next_batch(self) -> list[int]:
        """This process's share of the next global batch of prompt indices (epochs over a shuffled order)."""
        while len(self._order) < self.cfg.batch_size:
            order = list(range(len(self.prompts)))
            self._rng.shuffle(order)
            self._order += order
        batch, self._order = self._order[: self.cfg.batch_size], self._order[self.cfg.batch_size :]
        rank = self.acc.process_index
        return batch[rank * self.local_batch : (rank + 1) * self.local_batch]

    # ---- rollout ----------------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, indices: list[int]) -> Rollout:
        cfg = self.cfg
        policy = self.unwrapped_policy()
        queries, query_mask = left_pad([self.prompt_ids[i] for i in indices], self.pad_id, self.device)
        responses = generate(policy, queries, query_mask, self.gen)
        mask, has_eos = response_mask(responses, self.eos_id)
        logprobs, ref_logprobs, values = [], [], []
        for s in range(0, len(indices), self.local_mini):
            sl = slice(s, s + self.local_mini)
            args = (queries[sl], query_mask[sl], responses[sl], mask[sl])
            logits = response_logits(policy, *args, cfg.temperature)
            logprobs.append(behaviour_logprobs(logits, responses[sl], mask[sl], cfg.top_k, cfg.top_p))
            with policy.disable_adapter():
                ref = response_logits(policy, *args, cfg.temperature)
            ref_logprobs.append(core.logprobs_from_logits(ref, responses[sl]))
            values.append(response_values(self.value_model, *args))
        token_lists = response_tokens(responses, mask, has_eos)
        completions = self.tok.batch_decode(token_lists, skip_special_tokens=True)
        prompts = [self.prompts[i] for i in indices]
        scores = self.score_fn(prompts, completions, token_lists).to(self.device).float()
        return Rollout(
            queries,
            query_mask,
            responses,
            mask,
            has_eos,
            torch.cat(logprobs),
            torch.cat(ref_logprobs) * mask,
            torch.cat(values) * mask,
            scores,
            completions,
        )

    # ---- update -----------------------------------------------------------------------------
    def update(self, ro: Rollout) -> dict[str, float]:
        """`ppo_epochs` passes of clipped policy + value updates over shuffled minibatches of one rollout."""
        scores, kl, advantages, returns = self._advantages(ro)
        learning_rate = self.sched.get_last_lr()[0]  # what this step's optimizer steps use
        acc: dict[str, list[torch.Tensor]] = defaultdict(list)
        for _ in range(self.cfg.ppo_epochs):
            order = torch.randperm(len(ro), device=self.device)
            for s in range(0, len(ro), self.local_mini):
                idx = order[s : s + self.local_mini]
                for name, value in self._minibatch_step(ro, idx, advantages, returns).items():
                    acc[name].append(value)
        self.sched.step()
        stats = self._step_stats(ro, acc, scores, kl, advantages, returns)
        stats["learning_rate"] = learning_rate
        return stats

    def _advantages(self, ro: Rollout) -> tuple[torch.Tensor, ...]:
        """(scores with the missing-EOS penalty, per-token KL, whitened GAE advantages, returns)."""
        cfg = self.cfg
        scores = ro.scores.clone()
        if cfg.missing_eos_penalty is not None:
            scores = scores - cfg.missing_eos_penalty * (~ro.has_eos).float()
        rewards, kl = core.shaped_rewards(scores, ro.logprobs, ro.ref_logprobs, ro.mask, self.kl_ctl.value)
        if cfg.whiten_rewards:
            rewards = core.masked_whiten(rewards, ro.mask, shift_mean=False)
        advantages, returns = core.gae(rewards, ro.values, ro.mask, cfg.gamma, cfg.lam)
        return scores, kl, core.masked_whiten(advantages, ro.mask), returns

    def _minibatch_step(
        self, ro: Rollout, idx: torch.Tensor, advantages: torch.Tensor, returns: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """One optimizer step on the rollout rows `idx`; returns its losses and clip/KL statistics."""
        cfg = self.cfg
        args = (ro.queries[idx], ro.query_mask[idx], ro.responses[idx], ro.mask[idx])
        logits = response_logits(self.policy, *args, cfg.temperature)
        new_logprobs = behaviour_logprobs(logits, ro.responses[idx], ro.mask[idx], cfg.top_k, cfg.top_p)
        vpred = response_values(self.value_model, *args)
        pg_loss, pg = core.policy_loss(
            new_logprobs, ro.logprobs[idx], advantages[idx], ro.mask[idx], cfg.cliprange
        )
        vf_loss, vf = core.value_loss(vpred, ro.values[idx], returns[idx], ro.mask[idx], cfg.cliprange_value)
        loss = pg_loss + cfg.vf_coef * vf_loss
        self.opt.zero_grad(set_to_none=True)
        self.acc.backward(loss)
        self.acc.clip_grad_norm_(self.policy_params, cfg.max_grad_norm)
        if self.value_params:
            self.acc.clip_grad_norm_(self.value_params, cfg.max_grad_norm)
        self.opt.step()
        with torch.no_grad():
            return {
                "policy_loss": pg_loss.detach(),
                "value_loss": vf_loss.detach(),
                "policy_clipfrac": pg["clipfrac"],
                "value_clipfrac": vf["clipfrac"],
                "approxkl": pg["approxkl"],
                "entropy": core.masked_mean(
                    core.entropy_from_logits(filter_logits(logits, cfg.top_k, cfg.top_p)), ro.mask[idx]
                ),
            }

    def _step_stats(
        self,
        ro: Rollout,
        acc: dict[str, list[torch.Tensor]],
        scores: torch.Tensor,
        kl: torch.Tensor,
        advantages: torch.Tensor,
        returns: torch.Tensor,
    ) -> dict[str, float]:
        """The step's statistics averaged over minibatches and processes; then the KL controller moves."""
        seq_kl = kl.sum(1)
        local = {k: torch.stack(v).mean() for k, v in acc.items()}
        local.update(
            {
                "score": ro.scores.mean(),
                "reward": (scores - self.kl_ctl.value * seq_kl).mean(),
                "kl": seq_kl.mean(),
                "kl_per_token": core.masked_mean(kl, ro.mask),
                "response_length": ro.mask.sum(1).mean(),
                "eos_fraction": ro.has_eos.float().mean(),
                "advantage_abs": core.masked_mean(advantages.abs(), ro.mask),
                "return_mean": core.masked_mean(returns, ro.mask),
                "value_mean": core.masked_mean(ro.values, ro.mask),
            }
        )
        names = sorted(local)
        stacked = self.acc.reduce(torch.stack([local[n].float() for n in names]), reduction="mean")
        stats = dict(zip(names, stacked.tolist(), strict=True))
        stats["kl_coef"] = self.kl_ctl.value  # the coefficient this step's rewards were shaped with
        self.kl_ctl.update(stats["kl"], self.cfg.batch_size)
        return stats

    def train(self) -> list[dict[str, float]]:
        """Run `cfg.steps` rollout+update steps; returns the per-step stats (also logged as ppo/...)."""
        torch.manual_seed(self.cfg.seed + self.acc.process_index)
        for step in range(1, self.cfg.steps + 1):
            t0 = time.perf_counter()
            ro = self.rollout(self.next_batch())  # generation + reward/ref/value scoring
            t1 = time.perf_counter()
            stats = self.update(ro)
            stats["time/rollout_s"], stats["time/update_s"] = t1 - t0, time.perf_counter() - t1
            self.history.append(stats)
            if self.acc.is_main_process:
                if step % self.cfg.log_every == 0 or step == self.cfg.steps:
                    self.log.log_metrics({f"ppo/{k}": v for k, v in stats.items()}, step=step)
                if step % self.cfg.sample_every == 0 or step == self.cfg.steps:
                    self.log.log_table(self._samples(ro), f"ppo/samples/step_{step:05d}.json")
                _log.info(
                    "ppo step %d/%d score %.3f kl %.3f kl_coef %.4f len %.1f",
                    step,
                    self.cfg.steps,
                    stats["score"],
                    stats["kl"],
                    stats["kl_coef"],
                    stats["response_length"],
                )
        return self.history

    def _samples(self, ro: Rollout, n: int = 8) -> dict[str, list]:
        texts = self.tok.batch_decode(ro.queries[:n], skip_special_tokens=False)
        pad = self.tok.pad_token
        return {
            "prompt": [t.replace(pad, "") for t in texts],
            "completion": ro.completions[:n],
            "score": ro.scores[:n].tolist(),
            "has_eos": ro.has_eos[:n].tolist(),
        }


@torch.no_grad()
def heldout_eval(
    policy,  # peft.PeftModel; with the adapter disabled it is the SFT policy (the reference)
    tokenizer,
    score_fn: ScoreFn,
    prompts: Sequence[Messages],
    cfg: PpoConfig,
    batch_size: int = 16,
) -> tuple[dict[str, float], dict[str, list]]:
    """Reward of the SFT policy and of the tuned policy on the same held-out prompts, and the KL between them.

    Both generate greedily (or sample with the same fixed seed); reward = reward-model score minus the
    missing-EOS penalty. kl_ref_eval = mean over prompts of sum_t KL(pi(.|s_t) || ref(.|s_t)), the exact
    per-token KL along the tuned policy's own responses. Returns (metrics, sample table).
    """
    prompts, ids = heldout_prompts(tokenizer, prompts, cfg)
    was_training = policy.training
    policy.eval()
    gen = sampling_config(cfg, tokenizer, do_sample=cfg.eval_do_sample)
    out: dict[str, list] = defaultdict(list)
    for name in ("sft", "ppo"):
        torch.manual_seed(cfg.seed)
        for s in range(0, len(prompts), batch_size):
            batch = answer_batch(
                policy, tokenizer, score_fn, name, prompts[s : s + batch_size], ids[s : s + batch_size], gen
            )
            for key, values in batch.items():
                out[key] += values
    if was_training:
        policy.train()
    return heldout_metrics(out, len(prompts), cfg), {
        "prompt": [p[-1]["content"] for p in prompts],
        "sft": out["completion_sft"],
        "sft_score": out["score_sft"],
        "ppo": out["completion_ppo"],
        "ppo_score": out["score_ppo"],
        "kl": out["kl"],
    }


def heldout_prompts(
    tokenizer, prompts: Sequence[Messages], cfg: PpoConfig
) -> tuple[list[Messages], list[list[int]]]:
    """The held-out prompts that fit, at most `eval_prompts` of them, a fixed sample across the file (which
    is ordered by module, so its head would cover few modules)."""
    prompts, ids = select_prompts(tokenizer, prompts, cfg.max_prompt_tokens)
    if len(prompts) > cfg.eval_prompts:
        keep = sorted(random.Random(cfg.seed).sample(range(len(prompts)), cfg.eval_prompts))
        prompts, ids = [prompts[i] for i in keep], [ids[i] for i in keep]
    if not prompts:
        raise ValueError(f"no held-out prompt fits ppo.max_prompt_tokens={cfg.max_prompt_tokens}")
    return prompts, ids


def answer_batch(
    policy, tokenizer, score_fn: ScoreFn, name: str, prompts: list[Messages], ids: list[list[int]], gen
) -> dict[str, list]:
    """One batch answered by the SFT policy (`name="sft"`: adapter disabled) or the tuned one, scored; for
    the tuned one also the exact KL to the reference along its answers."""
    device = next(policy.parameters()).device
    q, qm = left_pad(ids, gen.pad_token_id, device)
    if name == "sft":
        with policy.disable_adapter():
            resp = generate(policy, q, qm, gen)
    else:
        resp = generate(policy, q, qm, gen)
    mask, has_eos = response_mask(resp, gen.eos_token_id)
    tokens = response_tokens(resp, mask, has_eos)
    texts = tokenizer.batch_decode(tokens, skip_special_tokens=True)
    out = {
        f"score_{name}": score_fn(list(prompts), texts, tokens).float().cpu().tolist(),
        f"has_eos_{name}": has_eos.cpu().tolist(),
        f"completion_{name}": texts,
    }
    if name == "ppo":
        logits = response_logits(policy, q, qm, resp, mask)
        with policy.disable_adapter():
            ref_logits = response_logits(policy, q, qm, resp, mask)
        out["kl"] = (core.kl_from_logits(logits, ref_logits) * mask).sum(1).cpu().tolist()
    return out


def heldout_metrics(out: dict[str, list], n: int, cfg: PpoConfig) -> dict[str, float]:
    """Means over the held-out prompts; `reward_gain` is what the stage's gate checks."""

    def reward(name: str) -> float:
        penalty = cfg.missing_eos_penalty or 0.0
        vals = [
            s - (0.0 if e else penalty)
            for s, e in zip(out[f"score_{name}"], out[f"has_eos_{name}"], strict=True)
        ]
        return sum(vals) / len(vals)

    metrics = {
        "reward_sft_eval": reward("sft"),
        "reward_ppo_eval": reward("ppo"),
        "score_sft_eval": sum(out["score_sft"]) / n,
        "score_ppo_eval": sum(out["score_ppo"]) / n,
        "eos_rate_sft_eval": sum(out["has_eos_sft"]) / n,
        "eos_rate_ppo_eval": sum(out["has_eos_ppo"]) / n,
        "kl_ref_eval": sum(out["kl"]) / n,
        "eval_prompts": float(n),
    }
    metrics["reward_gain"] = metrics["reward_ppo_eval"] - metrics["reward_sft_eval"]
    return metrics
