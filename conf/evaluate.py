"""Config of the `evaluate` stage: held-out metrics, sample generations and gates."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from conf.base import StageConfig

Decoding = Literal["greedy", "temperature", "top_k", "top_p", "beam"]
ModelName = Literal["base", "sft", "ppo"]

DEFAULT_SAMPLE_PROMPTS = [
    "Summarize what the function `os.path.join` does.",
    "Explain the purpose of the `json` module in one sentence.",
    "What does `itertools.chain` return?",
]
DEFAULT_SAMPLE_MODELS: tuple[ModelName, ...] = ("sft", "ppo")
DEFAULT_DECODINGS: tuple[Decoding, ...] = ("greedy", "temperature", "top_k", "top_p", "beam")
DEFAULT_LM_EVAL_MODELS: tuple[ModelName, ...] = ("ppo",)


class EvaluateConfig(StageConfig):
    # Gate thresholds change no output: a stricter gate re-checks the cached folder instead of re-running.
    NOT_RESULT_AFFECTING = frozenset(
        {
            "batch_size",
            "min_rm_accuracy",
            "min_win_rate",
            "max_kl",
            "max_ppl_ppo",
            "min_distinct_ppo",
            "gate_action",
            "min_margin_over_constant",
            "max_ppl_ratio",
        }
    )

    # perplexity / bits per byte on the validation token shards
    block_size: int = Field(128, gt=1, description="Tokens per window (capped at the model's context).")
    max_val_tokens: int = Field(16_384, gt=1, description="Cap on validation tokens scored per model.")
    # generation on eval-split prompts
    max_prompts: int = Field(
        200,
        gt=0,
        description="Held-out prompts (sft/eval.jsonl) answered by each policy: a seeded sample stratified "
        "by top-level package (proportional, at least one per package); all of them, with a warning, when "
        "fewer exist. Keep it at 200+ for win rates whose 95% interval is narrower than about +-0.07.",
    )
    include_base: bool = Field(
        False,
        description="Also answer the held-out prompts with the pretrained model (raw-text prompts: it never "
        "saw the chat format) and score it like the policies.",
    )
    max_prompt_tokens: int = Field(192, gt=0, description="Prompts are left-truncated to this many tokens.")
    max_new_tokens: int = Field(48, gt=0, description="Response length cap for eval prompts.")
    max_pref_pairs: int = Field(
        2000,
        gt=0,
        description="Held-out preference pairs (prefs/eval.jsonl) scored by both reward models: a seeded "
        "sample stratified by rejected kind, so every kind present gets an accuracy.",
    )
    max_rm_tokens: int = Field(
        384, gt=0, description="Reward-model inputs are truncated to this many tokens."
    )
    kl_samples: int = Field(
        1, ge=0, description="Sampled PPO responses per prompt for the KL(PPO||SFT) estimate."
    )
    seed: int = Field(0, description="Seeds the prompt sample, KL samples, constant candidates, bootstrap.")
    bootstrap_samples: int = Field(
        1000, ge=10, description="Paired bootstrap resamples (over prompts) for the 95% intervals."
    )
    # the best constant answer: the baseline a policy that ignores its prompt would reach
    constant_train_rows: int = Field(
        512, gt=0, description="Training references (sft/train.jsonl, seeded sample) it is chosen on."
    )
    constant_common: int = Field(
        10, ge=0, description="Candidates: the stock answers plus this many most frequent training answers..."
    )
    constant_sampled: int = Field(128, ge=0, description="...plus this many other training answers (seeded).")
    batch_size: int = Field(16, gt=0, description="Sequences per forward/generate batch.")
    # sample-generation table
    sample_prompts: list[str] = Field(default_factory=lambda: list(DEFAULT_SAMPLE_PROMPTS))
    sample_models: list[ModelName] = Field(default_factory=lambda: list(DEFAULT_SAMPLE_MODELS), min_length=1)
    decodings: list[Decoding] = Field(default_factory=lambda: list(DEFAULT_DECODINGS), min_length=1)
    sample_max_new_tokens: int = Field(48, gt=0)
    temperature: float = Field(0.8, gt=0)
    top_k: int = Field(20, gt=0)
    top_p: float = Field(0.9, gt=0, le=1)
    num_beams: int = Field(4, gt=1)
    repetition_penalty: float = Field(1.0, gt=0, description="Applied to every sample decoding; 1.0 = off.")
    # optional lm-evaluation-harness run (its tasks download data: off by default)
    lm_eval_tasks: list[str] = Field(default_factory=list, description="lm_eval task names; [] skips it.")
    lm_eval_models: list[ModelName] = Field(
        default_factory=lambda: list(DEFAULT_LM_EVAL_MODELS), min_length=1
    )
    lm_eval_limit: int | None = Field(None, gt=0, description="Examples per lm_eval task (None: all).")
    lm_eval_include_path: str | None = Field(
        None,
        description="A folder of extra lm_eval task YAMLs (e.g. tasks on local data: `dataset_path: "
        "json`, `dataset_kwargs: {data_files: ...}`), searched besides lm_eval's own tasks. The content of "
        "every file under it keys the stage hash (the runner fingerprints it), so editing a task or its data "
        "re-runs evaluate: keep the data files in this folder (a file outside it is not hashed). Relative "
        "`data_files` resolve against the working directory, not the YAML's folder.",
    )
    plot: bool = True
    # quality gates (None disables a gate); none reads a number of the reward model PPO optimised
    gate_action: Literal["fail", "warn"] = Field(
        "fail",
        description="fail: a failed gate stops the flow; warn: it is logged as a warning and the run goes "
        "on (for a preset whose models are known not to pass yet, e.g. tiny on 2 cores).",
    )
    min_distinct_ppo: float | None = Field(
        0.5,
        ge=0,
        le=1,
        description="Gate on eval/distinct_ppo (distinct greedy answers / prompts): a collapsed policy that "
        "gives most prompts the same answer fails.",
    )
    min_margin_over_constant: float | None = Field(
        0.0,
        description="Gate: eval/rouge_l_ppo and eval/token_f1_ppo must each exceed the best constant "
        "answer's score (eval/*_constant) by more than this.",
    )
    max_ppl_ratio: float | None = Field(
        1.15, gt=0, description="Gate on eval/ppl_ratio_ppo_sft (validation perplexity, PPO / SFT)."
    )
    max_kl: float | None = Field(
        10.0,
        ge=0,
        description="Gate on eval/kl_ppo_sft: KL(PPO || SFT) in nats per response, on sampled PPO "
        "responses (needs kl_samples >= 1).",
    )
    min_win_rate: float | None = Field(
        None, ge=0, le=1, description="Gate on eval/judge_win_rate_ppo_vs_sft (the independent judge)."
    )
    min_rm_accuracy: float | None = Field(
        None, ge=0, le=1, description="Gate on eval/rm_accuracy (the policy's reward model, held-out pairs)."
    )
    max_ppl_ppo: float | None = Field(None, gt=0, description="Gate on eval/ppl_ppo.")

    @model_validator(mode="after")
    def _kl_gate_needs_samples(self) -> EvaluateConfig:
        if self.max_kl is not None and self.kl_samples == 0:
            raise ValueError(
                "evaluate.max_kl gates the sampled KL estimate: set kl_samples >= 1, or max_kl: null "
                "(with kl_samples 0 the KL is measured on greedy answers, which are no draws from the policy)"
            )
        return self
