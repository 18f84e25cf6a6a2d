"""The ppo stage: PPO's math against hand-computed values, a short real PPO run on a toy reward, sampling
log-probs under top-k/top-p, the KL controller over a run-sized horizon, and the stage end to end on tiny
real models for every algorithm (ppo, grpo, rloo, dpo: outputs load again, metrics and quality gate)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conf.ppo import PpoConfig
from tasks.common.generation import response_mask
from tasks.common.tracking import MetricLogger
from tasks.ppo import core


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- core math -------------------------------------------------------------------------------


def test_gae_matches_hand_computed_values():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    values = torch.tensor([[0.5, 0.4, 0.3], [1.0, 0.5, 9.0]])  # 9.0 sits on padding: must be ignored
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv, ret = core.gae(rewards, values, mask, gamma=0.9, lam=0.5)
    # row 0: delta2 = 1 - .3 = .7; delta1 = .9*.3 - .4 = -.13; delta0 = .9*.4 - .5 = -.14; gamma*lam = .45
    torch.testing.assert_close(adv[0], torch.tensor([-0.14 + 0.45 * 0.185, -0.13 + 0.45 * 0.7, 0.7]))
    # row 1 ends at t=1 (value after the end is 0): delta1 = 2 - .5 = 1.5; delta0 = .9*.5 - 1 = -.55
    torch.testing.assert_close(adv[1], torch.tensor([-0.55 + 0.45 * 1.5, 1.5, 0.0]))
    torch.testing.assert_close(ret, torch.tensor([[0.44325, 0.585, 1.0], [1.125, 2.0, 0.0]]))


def test_gae_with_gamma_lambda_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[0.1, -0.2, 0.3, 1.0]])
    values = torch.tensor([[0.2, 0.1, 0.0, -0.3]])
    adv, ret = core.gae(rewards, values, torch.ones(1, 4), gamma=1.0, lam=1.0)
    to_go = torch.tensor([[1.2, 1.1, 1.3, 1.0]])
    torch.testing.assert_close(ret, to_go)
    torch.testing.assert_close(adv, to_go - values)


def test_policy_loss_clips_and_reports_clip_fraction():
    ratio = torch.tensor([[1.5, 0.5, 1.1]])
    adv = torch.tensor([[1.0, -1.0, 2.0]])
    loss, stats = core.policy_loss(ratio.log(), torch.zeros(1, 3), adv, torch.ones(1, 3), cliprange=0.2)
    # unclipped -A*r = [-1.5, .5, -2.2]; clipped -A*clip(r) = [-1.2, .8, -2.2]; max = [-1.2, .8, -2.2]
    assert loss.item() == pytest.approx(-2.6 / 3)
    assert stats["clipfrac"].item() == pytest.approx(2 / 3)
    assert stats["approxkl"].item() == pytest.approx(0.5 * sum(math.log(r) ** 2 for r in (1.5, 0.5, 1.1)) / 3)


def test_policy_loss_ignores_padding():
    lp = torch.tensor([[0.1, 5.0]])
    loss, stats = core.policy_loss(
        lp, torch.zeros(1, 2), torch.tensor([[1.0, 100.0]]), torch.tensor([[1.0, 0.0]]), 0.2
    )
    assert loss.item() == pytest.approx(-min(math.exp(0.1), 1.2))
    assert stats["clipfrac"].item() == 0.0


def test_value_loss_clips_around_old_values():
    loss, stats = core.value_loss(
        torch.tensor([[1.0, 0.0]]),
        torch.tensor([[0.5, 0.5]]),
        torch.tensor([[2.0, 0.4]]),
        torch.ones(1, 2),
        0.2,
    )
    # clipped v = [.7, .3]; losses [1, .16]; clipped losses [1.69, .01];
    # 0.5 * mean(max) = 0.5 * (1.69 + .16) / 2
    assert loss.item() == pytest.approx(0.4625)
    assert stats["clipfrac"].item() == pytest.approx(0.5)


def test_masked_whiten_and_mean():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert core.masked_mean(x, mask).item() == pytest.approx(2.0)
    assert core.masked_var(x, mask).item() == pytest.approx(1.0)  # unbiased
    torch.testing.assert_close(
        core.masked_whiten(x, mask), torch.tensor([[-1.0, 0.0, 1.0, 0.0]]), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(
        core.masked_whiten(x, mask, shift_mean=False), torch.tensor([[1.0, 2.0, 3.0, 0.0]]), atol=1e-4, rtol=0
    )


def test_response_mask_keeps_tokens_through_first_eos():
    responses = torch.tensor([[5, 1, 2, 1], [5, 5, 5, 5], [1, 3, 3, 3]])
    mask, has_eos = response_mask(responses, eos_id=1)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert has_eos.tolist() == [True, False, True]


def test_shaped_rewards_put_score_on_last_real_token():
    rewards, kl = core.shaped_rewards(
        torch.tensor([1.0, 2.0]),
        torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]]),
        torch.tensor([[-1.5, -2.0, -2.0], [-1.0, -1.0, -1.0]]),
        torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]),
        kl_coef=0.1,
    )
    torch.testing.assert_close(kl, torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 1.0, 0.0], [0.0, 0.0, 2.0]]))


def test_logprobs_entropy_and_kl_from_logits():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, -1.0]]])
    tokens = torch.tensor([[3, 0]])
    lp = core.logprobs_from_logits(logits, tokens)
    assert lp[0, 0].item() == pytest.approx(-math.log(4))
    assert lp[0, 1].item() == pytest.approx(torch.log_softmax(logits[0, 1], -1)[0].item())
    assert core.entropy_from_logits(logits)[0, 0].item() == pytest.approx(math.log(4))
    kl = core.kl_from_logits(logits, torch.zeros_like(logits))
    assert kl[0, 0].item() == pytest.approx(0.0, abs=1e-6) and kl[0, 1].item() > 0
    # k3 is non-negative and its mean over samples from p estimates KL(p || q)
    p, q = (
        torch.distributions.Categorical(logits=logits[0, 1]),
        torch.distributions.Categorical(logits=torch.zeros(4)),
    )
    torch.manual_seed(0)
    x = torch.multinomial(p.probs, 20000, replacement=True)
    k3 = core.kl_estimate(p.log_prob(x), q.log_prob(x), "k3")
    assert (k3 >= 0).all()
    assert k3.mean().item() == pytest.approx(kl[0, 1].item(), rel=0.05)


def test_kl_controllers():
    fixed = core.FixedKLController(0.1)
    fixed.update(100.0, 64)
    assert fixed.value == 0.1
    ctl = core.AdaptiveKLController(0.1, target=1.0, horizon=10)
    ctl.update(2.0, 5)  # KL above target: coefficient grows by 1 + 0.2 * 5/10
    assert ctl.value == pytest.approx(0.11)
    ctl.update(0.5, 5)  # below target: shrinks by 1 - 0.2 * 5/10 (error clipped at -0.2)
    assert ctl.value == pytest.approx(0.11 * 0.9)
    ctl.update(1.1, 10)  # small error passes unclipped
    assert ctl.value == pytest.approx(0.11 * 0.9 * 1.1)


def test_config_rejects_bad_batches():
    with pytest.raises(ValueError, match="mini_batch_size"):
        PpoConfig(batch_size=10, mini_batch_size=4)
    with pytest.raises(ValueError, match="num_generations"):
        PpoConfig(algorithm="grpo", batch_size=12, mini_batch_size=4, num_generations=8)
    with pytest.raises(ValueError, match="temperature"):
        PpoConfig(temperature=0)
    PpoConfig(algorithm="dpo", batch_size=12, mini_batch_size=4, num_generations=8)  # no generations in DPO


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_config_rejects_top_k_top_p_where_trl_ignores_them_in_log_probs(algorithm):
    for knob in ({"top_k": 20}, {"top_p": 0.9}):
        with pytest.raises(ValueError, match="unfiltered distribution"):
            PpoConfig(algorithm=algorithm, **knob)
    PpoConfig(algorithm="ppo", top_k=20, top_p=0.9)  # ours stores the filtered log-probs


def test_kl_horizon_defaults_to_a_tenth_of_the_run():
    from conf.loader import load_config

    tiny = load_config("tiny").ppo
    assert tiny.kl_horizon is None
    assert tiny.kl_horizon_episodes() == tiny.steps * tiny.batch_size // 10
    assert PpoConfig(steps=2, batch_size=8, mini_batch_size=4).kl_horizon_episodes() == 8  # >= one batch
    assert PpoConfig(kl_horizon=2000).kl_horizon_episodes() == 2000


def test_adaptive_kl_controller_acts_within_the_tiny_run():
    """Fed a KL twice the target for the whole tiny run, the coefficient must move well beyond noise; the
    former fixed horizon (2000 episodes > the run's 960) moved it by 10% at most."""
    from conf.loader import load_config
    from tasks.ppo.trainer import kl_controller

    cfg = load_config("tiny").ppo

    def run(c: PpoConfig, kl: float) -> float:
        ctl = kl_controller(c)
        for _ in range(c.steps):
            ctl.update(kl, c.batch_size)
        return ctl.value / c.init_kl_coef

    assert run(cfg, 2 * cfg.kl_target) > 5.0
    assert run(cfg, 0.0) < 0.2
    assert run(cfg.model_copy(update={"kl_horizon": 2000}), 2 * cfg.kl_target) < 1.11


# ---- a real PPO run on a toy reward -----------------------------------------------------------


class Recorder(MetricLogger):
    """A MetricLogger that keeps what it is sent."""

    def __init__(self):
        self.metrics, self.tables, self.table_data = [], [], {}

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, dict(metrics)))

    def log_table(self, data, artifact_file):
        self.tables.append(artifact_file)
        self.table_data[artifact_file] = data


PROMPTS = [[{"role": "user", "content": f"Explain item {i} of the list."}] for i in range(40)]


def toy_policy_and_value(seed: int = 0):
    """A tiny random Llama policy with a fresh LoRA adapter (lm_head included, so it learns in seconds),
    and a tiny random sequence-classification value model on the same tokenizer."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForSequenceClassification

    from tests.tiny_models import tiny_llama, tiny_tokenizer

    tok = tiny_tokenizer()
    tok.padding_side = "left"
    base = tiny_llama(tok, hidden=32, layers=1, heads=2, seed=seed)
    value = LlamaForSequenceClassification(type(base.config)(**{**base.config.to_dict(), "num_labels": 1}))
    policy = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "lm_head"])
    )
    return policy, value, tok


def toy_cfg(**kw) -> PpoConfig:
    base = dict(
        steps=16,
        batch_size=16,
        mini_batch_size=8,
        max_new_tokens=8,
        learning_rate=1e-2,
        value_learning_rate=1e-3,
        lora_r=4,
        lora_alpha=8,
        lora_target_modules=["q_proj", "v_proj", "lm_head"],
        missing_eos_penalty=None,
        init_kl_coef=0.01,
        adaptive_kl=False,
        eval_prompts=40,
        eval_do_sample=True,
    )
    return PpoConfig(**{**base, **kw})


def test_ppo_raises_a_toy_reward_and_logs_metrics():
    """Reward = share of response tokens in the lower half of the vocabulary: PPO must raise it."""
    from tasks.ppo.trainer import PPOTrainer, heldout_eval

    policy, value, tok = toy_policy_and_value()
    half = len(tok) // 2

    def score(prompts, completions, ids):
        assert len(prompts) == len(completions) == len(ids)
        return torch.tensor([sum(t < half for t in x) / max(len(x), 1) for x in ids])

    cfg = toy_cfg()
    rec = Recorder()
    history = PPOTrainer(cfg, policy, tok, value, score, PROMPTS, rec).train()
    assert len(history) == cfg.steps == len(rec.metrics)
    first = sum(h["score"] for h in history[:4]) / 4
    last = sum(h["score"] for h in history[-4:]) / 4
    assert last > first + 0.1, (first, last)
    # each step logs the learning rate its own updates used: the configured one first, then the linear anneal
    assert [h["learning_rate"] for h in history] == pytest.approx(
        [cfg.learning_rate * (1 - k / cfg.steps) for k in range(cfg.steps)]
    )
    first_step, first_logged = rec.metrics[0]
    assert first_step == 1 and first_logged["ppo/learning_rate"] == pytest.approx(cfg.learning_rate)
    step, logged = rec.metrics[-1]
    assert step == cfg.steps
    for name in (
        "score",
        "kl",
        "entropy",
        "policy_clipfrac",
        "value_clipfrac",
        "approxkl",
        "policy_loss",
        "value_loss",
        "response_length",
        "kl_coef",
    ):
        assert math.isfinite(logged[f"ppo/{name}"]), name
    assert logged["ppo/kl"] > 0 and logged["ppo/kl_coef"] == cfg.init_kl_coef  # fixed controller
    assert rec.tables  # sample rollouts

    metrics, table = heldout_eval(policy, tok, score, PROMPTS, cfg)
    assert metrics["reward_gain"] == pytest.approx(metrics["reward_ppo_eval"] - metrics["reward_sft_eval"])
    assert metrics["reward_gain"] > 0.1, metrics
    assert 0 < metrics["kl_ref_eval"] < 50
    assert len(table["ppo"]) == len(table["sft"]) == 40


def test_rollout_tensors_are_consistent():
    """A fresh LoRA adapter is the identity: policy and reference log-probs agree, KL is 0, padding 0."""
    from tasks.ppo.rollout import response_logits
    from tasks.ppo.trainer import PPOTrainer

    policy, value, tok = toy_policy_and_value()
    lengths = []

    def score(prompts, completions, ids):
        lengths.extend(len(x) for x in ids)
        return torch.zeros(len(ids))

    trainer = PPOTrainer(toy_cfg(max_new_tokens=12, temperature=0.7), policy, tok, value, score, PROMPTS)
    ro = trainer.rollout(trainer.next_batch())
    assert len(ro) == 16 and ro.responses.shape[1] <= 12
    torch.testing.assert_close(ro.logprobs, ro.ref_logprobs)
    assert (
        (ro.logprobs <= 0).all()
        and (ro.logprobs[ro.mask == 0] == 0).all()
        and (ro.values[ro.mask == 0] == 0).all()
    )
    # the score function saw each response up to (not including) EOS
    assert lengths == (ro.mask.sum(1) - ro.has_eos.float()).long().tolist()
    assert (ro.responses[ro.mask == 0] == tok.pad_token_id).all()
    # log-probs do not depend on the batch they were computed in (temperature-scaled, as sampled)
    logits = response_logits(policy, ro.queries[:3], ro.query_mask[:3], ro.responses[:3], ro.mask[:3], 0.7)
    again = (
        torch.gather(torch.log_softmax(logits, -1), 2, ro.responses[:3].unsqueeze(-1)).squeeze(-1)
        * ro.mask[:3]
    )
    torch.testing.assert_close(again, ro.logprobs[:3], atol=1e-4, rtol=1e-4)


def _filtered_trainer(**kw):
    """A PPO trainer sampling at temperature 0.7 with top-k 12 and top-p 0.8, on a policy whose model folder
    asks for other sampling settings (as the SFT folder's generation config does: top_k 50, temperature
    0.8): PPO's explicit settings must win."""
    from tasks.ppo.trainer import PPOTrainer

    policy, value, tok = toy_policy_and_value()
    policy.generation_config.update(do_sample=True, top_k=50, temperature=0.8)
    cfg = toy_cfg(**{"max_new_tokens": 10, "temperature": 0.7, "top_k": 12, "top_p": 0.8, **kw})
    return PPOTrainer(cfg, policy, tok, value, lambda p, c, ids: torch.zeros(len(ids)), PROMPTS), cfg


def test_top_k_top_p_log_probs_are_those_generate_sampled_from():
    """`generate`'s own processed scores (temperature, top-k, top-p: the distribution each token was drawn
    from) give the same log-probs as PPO's recomputation under the same filter; the unfiltered softmax
    (what PPO stored before) does not."""
    from tasks.common.generation import left_pad, response_mask
    from tasks.ppo import core
    from tasks.ppo.rollout import behaviour_logprobs, response_logits

    trainer, cfg = _filtered_trainer()
    policy = trainer.unwrapped_policy()
    q, qm = left_pad(trainer.prompt_ids[:8], trainer.pad_id)
    torch.manual_seed(0)
    with torch.no_grad():
        out = policy.generate(
            input_ids=q,
            attention_mask=qm,
            generation_config=trainer.gen,
            output_scores=True,
            return_dict_in_generate=True,
        )
    responses = out.sequences[:, q.shape[1] :]
    mask, _ = response_mask(responses, trainer.eos_id)
    sampled_from = torch.stack(out.scores, 1)  # [B, T, V], -inf outside top-k/top-p
    expected = torch.where(mask.bool(), core.logprobs_from_logits(sampled_from, responses), 0.0)
    with torch.no_grad():
        logits = response_logits(policy, q, qm, responses, mask, cfg.temperature)
    ours = behaviour_logprobs(logits, responses, mask, cfg.top_k, cfg.top_p)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)
    kept = torch.isfinite(sampled_from).sum(-1)[mask.bool()]
    assert 1 <= kept.min() and kept.max() <= cfg.top_k  # the filter really cut the distribution
    unfiltered = core.logprobs_from_logits(logits, responses) * mask
    assert (ours - unfiltered)[mask.bool()].min() > 1e-3  # renormalised over fewer tokens: higher


def test_rollout_stores_the_filtered_log_probs_and_top_k_1_is_greedy():
    """The rollout's stored log-probs equal a recomputation under the same filter (in other batches); with
    top_k=1 sampling is greedy and every sampled token has probability 1 (log-prob 0)."""
    from tasks.ppo.rollout import behaviour_logprobs, response_logits

    trainer, cfg = _filtered_trainer()
    ro = trainer.rollout(trainer.next_batch())
    policy = trainer.unwrapped_policy()
    with torch.no_grad():
        logits = response_logits(
            policy, ro.queries[:5], ro.query_mask[:5], ro.responses[:5], ro.mask[:5], 0.7
        )
    again = behaviour_logprobs(logits, ro.responses[:5], ro.mask[:5], cfg.top_k, cfg.top_p)
    torch.testing.assert_close(again, ro.logprobs[:5], atol=1e-4, rtol=1e-4)
    assert torch.isfinite(ro.logprobs).all() and (ro.logprobs[ro.mask == 0] == 0).all()

    greedy, _ = _filtered_trainer(top_k=1, top_p=1.0)
    ro = greedy.rollout(greedy.next_batch())
    torch.testing.assert_close(ro.logprobs, torch.zeros_like(ro.logprobs))


def test_ppo_with_top_k_top_p_trains_with_finite_statistics():
    """A token the updated policy's filter drops gets the floor log-prob (ratio ~0), never NaN."""
    trainer, cfg = _filtered_trainer(steps=3)
    history = trainer.train()
    assert len(history) == 3
    for stats in history:
        for name in ("policy_loss", "value_loss", "policy_clipfrac", "approxkl", "entropy", "kl"):
            assert math.isfinite(stats[name]), (name, stats)


def test_adaptive_kl_coefficient_moves_towards_target():
    from tasks.ppo.trainer import PPOTrainer

    policy, value, tok = toy_policy_and_value()
    half = len(tok) // 2

    def score(prompts, completions, ids):
        return torch.tensor([sum(t < half for t in x) / max(len(x), 1) for x in ids])

    cfg = toy_cfg(steps=4, adaptive_kl=True, init_kl_coef=0.1, kl_target=1000.0)
    assert cfg.kl_horizon_episodes() == 16  # the default: a tenth of the run, at least one batch
    history = PPOTrainer(cfg, policy, tok, value, score, PROMPTS).train()
    coefs = [h["kl_coef"] for h in history]  # KL far below target: each step shrinks by 1 - 0.2 * 16/16
    assert coefs == pytest.approx([0.1 * 0.8**i for i in range(4)])


# ---- the stage, end to end on tiny real model folders -------------------------------------------


def _prompt_rows(n: int, offset: int = 0, verb: str = "Explain") -> list[dict]:
    return [
        {
            "id": f"p{i}",
            "module": f"mod{i % 5}",
            "prompt": [{"role": "user", "content": f"{verb} the function f{i} in module mod{i % 5}."}],
            "completion": [{"role": "assistant", "content": f"It returns the sum of item {i}."}],
        }
        for i in range(offset, offset + n)
    ]


def _pair_rows(n: int) -> list[dict]:
    """Preference pairs as align_data writes them (the reward model's role)."""
    return [
        {
            **{k: v for k, v in row.items() if k != "completion"},
            "chosen": row["completion"],
            "rejected": [{"role": "assistant", "content": "Return a list."}],
            "rejected_kind": "generic",
        }
        for row in _prompt_rows(n, offset=200)
    ]


def _write_align_data(folder: Path, with_ppo_prompts: bool):
    """An align_data folder: SFT rows, the reward model's pairs and (the current format) the prompts of the
    `ppo` role, worded "Describe ..." so a test can tell them from the SFT prompts ("Explain ...")."""
    from tasks.common.alignment import PPO_PROMPTS, PREF_FILES, SFT_FILES
    from tasks.common.jsonl import write_jsonl
    from tests.helpers import seal

    files = {SFT_FILES["train"]: _prompt_rows(24), SFT_FILES["eval"]: _prompt_rows(8, offset=100)}
    files[PREF_FILES["train"]] = _pair_rows(16)
    if with_ppo_prompts:
        files[PPO_PROMPTS] = _prompt_rows(16, offset=300, verb="Describe")
    for name, rows in files.items():
        write_jsonl(folder / name, rows)
    return seal(folder, "align_data")


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> dict:
    """Finished sft / reward / align_data folders holding tiny real models, prompts and pairs."""
    from transformers import LlamaForSequenceClassification

    from tasks.common.models import save_model_folder
    from tests.helpers import seal
    from tests.tiny_models import tiny_llama, tiny_tokenizer

    root = tmp_path_factory.mktemp("ppo-upstream")
    tok = tiny_tokenizer()
    policy = tiny_llama(tok, hidden=32, layers=1, heads=2, seed=0)
    save_model_folder(policy, tok, root / "sft" / "model")
    rm_config = type(policy.config)(**{**policy.config.to_dict(), "num_labels": 1})
    torch.manual_seed(1)
    save_model_folder(LlamaForSequenceClassification(rm_config), tok, root / "reward" / "model")
    return {
        "sft": seal(root / "sft", "sft"),
        "reward": seal(root / "reward", "reward"),
        "align_data": _write_align_data(root / "align", with_ppo_prompts=True),
    }


@pytest.fixture(scope="module")
def legacy_upstream(upstream, tmp_path_factory) -> dict:
    """The same, with an align_data folder from before the `ppo` role (no PPO_PROMPTS file)."""
    folder = tmp_path_factory.mktemp("ppo-legacy-align")
    return {**upstream, "align_data": _write_align_data(folder, with_ppo_prompts=False)}


def test_reward_scorer_reads_the_rendered_conversation(upstream):
    """The scorer scores prompt + completion as the reward stage does (chat template, last-token reward)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tasks.common.reward_model import RewardModelScorer

    folder = upstream["reward"].dir / "model"
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    prompts = [
        [{"role": "user", "content": "What does f do?"}],
        [{"role": "user", "content": "And g, a longer one?"}],
    ]
    completions = ["It adds.", "It returns the sum of the list of numbers."]
    scores = RewardModelScorer(model, tok)(prompts, completions)
    for prompt, completion, score in zip(prompts, completions, scores, strict=True):
        text = tok.apply_chat_template(
            prompt + [{"role": "assistant", "content": completion}], tokenize=False
        )
        assert text.endswith("<|eos|>\n")
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            assert score.item() == pytest.approx(model(ids).logits[0, 0].item(), abs=1e-5)


def stage_cfg(**kw) -> PpoConfig:
    base = dict(
        steps=2,
        batch_size=8,
        mini_batch_size=4,
        ppo_epochs=2,
        max_new_tokens=6,
        eval_prompts=8,
        lora_r=4,
        lora_alpha=8,
        num_generations=4,
        min_reward_gain=-1e9,
        max_kl=1e9,
    )
    return PpoConfig(**{**base, **kw})


def _check_outputs(out: Path, report, upstream) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for name in ("reward_sft_eval", "reward_ppo_eval", "reward_gain", "kl_ref_eval"):
        assert math.isfinite(report.metrics[name]), name
    assert report.metrics["reward_gain"] == pytest.approx(
        report.metrics["reward_ppo_eval"] - report.metrics["reward_sft_eval"]
    )
    assert report.metrics["kl_ref_eval"] >= 0
    assert report.counts["eval_prompts"] == 8
    assert json.loads((out / "metrics.json").read_text())["metrics"] == report.metrics
    # the merged model and the adapter load again, and agree
    tok = AutoTokenizer.from_pretrained(out / "model")
    merged = AutoModelForCausalLM.from_pretrained(out / "model")
    base = AutoModelForCausalLM.from_pretrained(upstream["sft"].dir / "model")
    with_adapter = PeftModel.from_pretrained(base, out / "adapter")
    ids = tok("<|user|>\nhello<|end|>\n<|assistant|>\n", return_tensors="pt", add_special_tokens=False)[
        "input_ids"
    ]
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, with_adapter(ids).logits, atol=1e-4, rtol=1e-4)
    assert merged.generation_config.eos_token_id == tok.eos_token_id
    assert tok.chat_template


def _sampled_prompts(rec: Recorder) -> list[str]:
    return [p for name, t in rec.table_data.items() if name.startswith("ppo/samples/") for p in t["prompt"]]


def test_stage_ppo_writes_adapter_and_merged_model(upstream, tmp_path):
    """...trained on the prompts of the `ppo` role, which neither reward model has seen."""
    from tasks.ppo import ppo

    rec = Recorder()
    report = ppo(stage_cfg(sample_every=1), upstream, tmp_path, rec)
    _check_outputs(tmp_path, report, upstream)
    assert report.extra["algorithm"] == "ppo"
    assert (tmp_path / "eval_samples.json").exists()
    prompts = _sampled_prompts(rec)
    assert prompts and all("Describe the function" in p for p in prompts), prompts


def test_align_data_without_ppo_prompts_falls_back_to_sft_prompts_with_a_warning(
    legacy_upstream, tmp_path, caplog
):
    from tasks.ppo import ppo
    from tasks.ppo.stage import training_prompts

    with caplog.at_level("WARNING", logger="tasks.ppo.stage"):
        prompts = training_prompts(legacy_upstream["align_data"])
    assert [p[-1]["content"] for p in prompts] == [r["prompt"][-1]["content"] for r in _prompt_rows(24)]
    assert "has no ppo/prompts.jsonl" in caplog.text and "sft/train.jsonl" in caplog.text

    rec = Recorder()
    ppo(stage_cfg(steps=1, sample_every=1), legacy_upstream, tmp_path, rec)
    prompts = _sampled_prompts(rec)
    assert prompts and all("Explain the function" in p for p in prompts), prompts


def test_stage_dpo_trains_on_the_reward_model_pairs_and_writes_the_same_layout(upstream, tmp_path):
    """DPO (trl, LoRA on the SFT model, reference = adapter off) on the reward model's training pairs: the
    same outputs and report keys as PPO (so the gate and evaluate read it alike), and it learns the pairs:
    the implicit reward margin chosen - rejected grows and the DPO loss falls below log 2."""
    from tasks.ppo import ppo

    rec = Recorder()
    cfg = stage_cfg(algorithm="dpo", learning_rate=1e-2, dpo_epochs=2, log_every=1)
    report = ppo(cfg, upstream, tmp_path, rec)
    _check_outputs(tmp_path, report, upstream)
    assert report.extra["algorithm"] == "dpo"
    assert (
        report.counts["train_pairs"] == 16 and report.counts["steps"] == 2 * 16 // 4
    )  # epochs x pairs / mini
    logged = {k for _, m in rec.metrics for k in m}
    assert {"dpo/train/loss", "dpo/train/rewards/margins", "dpo/train/rewards/accuracies"} <= logged, logged
    m = report.metrics
    assert m["train_loss_last"] < math.log(2) and m["train_margin_last"] > m["train_margin_first"], m
    assert m["kl_ref_eval"] > 0  # the adapter moved the policy away from the reference


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_stage_trl_algorithms_write_the_same_layout(upstream, tmp_path, algorithm):
    from tasks.ppo import ppo

    rec = Recorder()
    report = ppo(stage_cfg(algorithm=algorithm, ppo_epochs=1, steps=2, log_every=1), upstream, tmp_path, rec)
    _check_outputs(tmp_path, report, upstream)
    assert report.extra["algorithm"] == algorithm
    logged = {k for _, m in rec.metrics for k in m}
    assert {f"{algorithm}/train/reward", "ppo/score", "ppo/response_length"} <= logged, logged
    assert [step for step, m in rec.metrics if "ppo/score" in m] == [1, 2]


def test_gate_fails_the_stage_loudly_naming_itself(upstream, tmp_path):
    from tasks.common.stage import QualityGateError, StageSpec, run_stage
    from tasks.ppo import STAGE_VERSION, gate, ppo

    spec = StageSpec("ppo", ppo, ("sft", "reward", "align_data"), STAGE_VERSION, gate=gate)
    cfg = stage_cfg(steps=1, min_reward_gain=100.0, max_kl=1e-9)
    with pytest.raises(
        QualityGateError, match=r"quality gate 'ppo' failed.*ppo.min_reward_gain=100.0.*ppo.max_kl"
    ):
        run_stage(spec, SimpleNamespace(ppo=cfg), upstream, tmp_path)


def test_bad_inputs_fail_naming_the_file(upstream, tmp_path):
    from tasks.ppo.stage import read_prompts
    from tests.helpers import seal

    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "train.jsonl").write_text(
        '{"prompt": [{"role": "user", "content": "hi"}]}\nnot json\n'
    )
    with pytest.raises(ValueError, match=r"train.jsonl:2"):
        read_prompts(seal(tmp_path, "align_data"), "sft/train.jsonl")


@pytest.mark.slow
def test_stage_ppo_under_torchrun_two_processes(upstream, tmp_path):
    from tasks.ppo import ppo

    report = ppo(stage_cfg(num_processes=2), upstream, tmp_path, MetricLogger())
    _check_outputs(tmp_path, report, upstream)
    assert not list(tmp_path.glob("*.tmp"))


def test_torchrun_rank_error_fails_the_stage_with_the_rank_exception(tmp_path):
    """Each rank runs under torchrun's `record`: the stage error carries a rank's own exception, read
    from torchrun's error file (here every rank finds its input stage without a manifest)."""
    from tasks.common.launch import LaunchError
    from tasks.ppo.stage import launch

    missing = tmp_path / "no-stage"
    inputs = {"sft": SimpleNamespace(path=str(missing))}
    with pytest.raises(LaunchError) as err:
        launch(stage_cfg(num_processes=2), inputs, tmp_path, MetricLogger())
    first = err.value.failures[0]
    assert first.error == f"FileNotFoundError: input stage sft at {missing} has no manifest"
    # both ranks fail the same way: whichever wrote its error file first is named
    assert re.match(
        r"ppo workers failed \(torchrun exit code 1\): rank ([01]) \(local rank \1\) died", str(err.value)
    )
    assert not list(tmp_path.glob("*.tmp"))
