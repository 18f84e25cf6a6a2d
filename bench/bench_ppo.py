"""PPO bench: episodes/s and the time split (generation, scoring, optimisation) of our PPO trainer against
trl 1.12's `trl.experimental.ppo.PPOTrainer` (the last trl release that shipped it; trl 1.16 has none).

Both run on the same tiny models, loaded from the same folders: a 2-layer width-64 Llama policy with a fresh
LoRA adapter (the reference is the adapter disabled), a value model and a reward model (Llama sequence
classifiers), the same chat-templated prompt ids, batch 16, 2 minibatches of 8, 4 PPO epochs, 16 response
tokens sampled at temperature 1, a fixed KL coefficient, one AdamW over LoRA + value parameters, one torch
thread. Each run is a fresh process (`--ours-worker` / `--trl-worker`), so both pay the same cold start;
timed: the `train()` call only (imports, model loading, trainer construction excluded), median of 3 runs,
alternating ours / baseline. Peak RSS is the worker process's.
- lmforge: `tasks.ppo.trainer.PPOTrainer` with the stage's `RewardModelScorer` (decode, chat template,
  re-tokenise, reward model), as the stage runs it.
- trl 1.12: its wheel installed into a temporary folder and imported in a subprocess whose PYTHONPATH puts
  it before the venv's trl 1.16; transformers/accelerate/peft come from the venv.
Time split, both sides measured by wrapping module functions (neither trainer is edited):
  generation   = sampling (`generate` / trl's `batch_generation`)
  scoring      = rest of the rollout: policy/ref log-probs, values, reward model (ours: one more policy
                 forward than trl, which keeps generate()'s scores; and the reward scorer decodes, renders the
                 chat template and re-tokenises, as the stage does: `ours_reward_scorer_s`)
  optimisation = the PPO epochs (ours: `update`, incl. GAE; trl: train() minus the others, so it also
                 holds GAE, whitening and trl's per-step logging)
  gc (trl only) = the two `gc.collect()` calls trl makes every PPO step; with transformers, datasets and
                 torch imported each takes ~0.2 s on this CPU, which dominates tiny-model runs. The second
                 row shows trl's rate with that time taken out (an upper bound for a patched trl).

    .venv/bin/python -m bench.bench_ppo [--steps 16] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.common import Measurement, PeakRss, row, save

TRL_BASELINE = "1.12.0"
ROOT = Path(__file__).resolve().parent.parent
SETTINGS = dict(
    batch_size=16,
    mini_batch_size=8,
    ppo_epochs=4,
    max_new_tokens=16,
    learning_rate=1e-3,
    init_kl_coef=0.05,
    missing_eos_penalty=1.0,
    temperature=1.0,
    gamma=1.0,
    lam=0.95,
    cliprange=0.2,
    cliprange_value=0.2,
    vf_coef=0.1,
    seed=0,
)
N_PROMPTS = 48


def build_models(folder: Path) -> None:
    """policy/, value/, reward/ model folders (tiny random Llamas on one tokenizer) and prompts.json."""
    from transformers import LlamaForSequenceClassification

    from tasks.common.testing import tiny_llama, tiny_tokenizer

    tok = tiny_tokenizer()
    policy = tiny_llama(tok, hidden=64, layers=2, heads=4, seed=0)
    policy.generation_config.eos_token_id = tok.eos_token_id
    policy.generation_config.pad_token_id = tok.pad_token_id
    policy.save_pretrained(folder / "policy")
    cls_config = type(policy.config)(**{**policy.config.to_dict(), "num_labels": 1})
    for seed, name in ((1, "value"), (2, "reward")):
        torch.manual_seed(seed)
        LlamaForSequenceClassification(cls_config).save_pretrained(folder / name)
    tok.save_pretrained(folder / "tokenizer")
    prompts = [
        [{"role": "user", "content": f"Explain the function f{i} in module mod{i % 5}."}]
        for i in range(N_PROMPTS)
    ]
    (folder / "prompts.json").write_text(json.dumps(prompts))


def load(folder: Path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder / "tokenizer")
    tok.padding_side = "left"
    policy = AutoModelForCausalLM.from_pretrained(folder / "policy")
    value = AutoModelForSequenceClassification.from_pretrained(folder / "value")
    reward = (
        AutoModelForSequenceClassification.from_pretrained(folder / "reward").requires_grad_(False).eval()
    )
    return tok, policy, value, reward, json.loads((folder / "prompts.json").read_text())


def lora():
    from peft import LoraConfig

    return LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM", bias="none"
    )


class Timer:
    """Wraps `module.name` so each call's seconds add up in `self.seconds[key]` (only when `when()`, if
    given)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def wrap(self, module, name: str, key: str, when=lambda: True):
        fn = getattr(module, name)

        def timed(*a, **kw):
            if not when():
                return fn(*a, **kw)
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t0

        setattr(module, name, timed)
        return fn


def run_ours(folder: Path, steps: int) -> dict:
    from peft import get_peft_model

    from conf.ppo import PpoConfig
    from tasks.common.reward_model import RewardModelScorer
    from tasks.ppo import trainer as tr

    torch.set_num_threads(1)
    tok, policy, value, reward, prompts = load(folder)
    torch.manual_seed(SETTINGS["seed"])  # the LoRA init, as the stage seeds it
    cfg = PpoConfig(
        **SETTINGS,
        steps=steps,
        value_learning_rate=SETTINGS["learning_rate"],
        adaptive_kl=False,
        lora_r=8,
        lora_alpha=16,
        max_grad_norm=1e9,
    )  # trl 1.12's PPO loop does not clip gradients
    trainer = tr.PPOTrainer(
        cfg, get_peft_model(policy, lora()), tok, value, RewardModelScorer(reward, tok), prompts
    )
    timer = Timer()
    saved = [(tr, "generate", timer.wrap(tr, "generate", "generation"))]
    saved += [(trainer, m, timer.wrap(trainer, m, m)) for m in ("rollout", "update", "score_fn")]
    try:
        t0 = time.perf_counter()
        history = trainer.train()
        total = time.perf_counter() - t0
    finally:
        for obj, name, fn in saved:
            setattr(obj, name, fn)
    s = timer.seconds
    return {
        "seconds": total,
        "episodes": steps * cfg.batch_size,
        "generation": s["generation"],
        "scoring": s["rollout"] - s["generation"],
        "optimisation": s["update"],
        "reward_scorer": s["score_fn"],
        "score_first": history[0]["score"],
        "score_last": history[-1]["score"],
        "kl_last": history[-1]["kl"],
    }


# ---- trl 1.12 baseline (`python -m bench.bench_ppo --trl-worker FOLDER STEPS`, PYTHONPATH=<trl 1.12 site>)
def trl_worker(folder: Path, steps: int) -> dict:
    import trl
    from datasets import Dataset
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as pt

    from tasks.ppo.rollout import prompt_ids

    if trl.__version__ != TRL_BASELINE:
        raise RuntimeError(
            f"baseline worker imported trl {trl.__version__} from {trl.__file__}, not {TRL_BASELINE}"
        )
    torch.set_num_threads(1)
    tok, policy, value, reward, prompts = load(folder)
    ids = prompt_ids(tok, prompts)
    data = Dataset.from_dict({"input_ids": ids})
    st = SETTINGS
    args = PPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl112-ppo-"),
        report_to="none",
        save_strategy="no",
        seed=st["seed"],
        per_device_train_batch_size=st["batch_size"],
        gradient_accumulation_steps=1,
        num_mini_batches=st["batch_size"] // st["mini_batch_size"],
        num_ppo_epochs=st["ppo_epochs"],
        total_episodes=steps * st["batch_size"],
        local_rollout_forward_batch_size=st["batch_size"],
        response_length=st["max_new_tokens"],
        temperature=st["temperature"],
        stop_token="eos",
        kl_coef=st["init_kl_coef"],
        kl_estimator="k1",
        missing_eos_penalty=st["missing_eos_penalty"],
        learning_rate=st["learning_rate"],
        gamma=st["gamma"],
        lam=st["lam"],
        cliprange=st["cliprange"],
        cliprange_value=st["cliprange_value"],
        vf_coef=st["vf_coef"],
        num_sample_generations=0,
        disable_tqdm=True,
        logging_steps=10**6,
        use_cpu=True,
        bf16=False,
        fp16=False,
    )
    torch.manual_seed(st["seed"])  # the LoRA init (trl wraps the policy in its constructor)
    trainer = PPOTrainer(
        args=args,
        processing_class=tok,
        model=policy,
        ref_model=None,
        reward_model=reward,
        train_dataset=data,
        value_model=value,
        eval_dataset=data,
        peft_config=lora(),
    )
    timer = Timer()
    timer.wrap(pt, "batch_generation", "generation")
    timer.wrap(pt, "forward", "ref", when=lambda: not torch.is_grad_enabled())
    timer.wrap(pt, "get_reward", "values_rewards")
    timer.wrap(pt.gc, "collect", "gc")  # trl calls gc.collect() twice per PPO step
    t0 = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - t0
    s = timer.seconds
    scoring, gc_s = s.get("ref", 0.0) + s.get("values_rewards", 0.0), s.get("gc", 0.0)
    return {
        "seconds": total,
        "episodes": steps * st["batch_size"],
        "generation": s["generation"],
        "scoring": scoring,
        "gc": gc_s,
        "optimisation": total - s["generation"] - scoring - gc_s,
        "trl": trl.__version__,
    }


def install_trl(tmp: Path) -> Path:
    """trl==1.12.0 unpacked into `tmp/site` (no dependencies: the venv's are used)."""
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "download", f"trl=={TRL_BASELINE}", "--no-deps", "-d", str(tmp)], check=True)
    wheel = next(tmp.glob(f"trl-{TRL_BASELINE}-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", str(tmp / "site"), str(wheel)], check=True)
    return tmp / "site"


def run_worker(which: str, folder: Path, steps: int, site: Path | None = None) -> dict:
    """One timed run in a fresh process (both sides pay the same cold start; only train() is timed)."""
    path = [str(site)] if site else []  # trl 1.12 before the venv's trl, in that process only
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([*path, str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TRL_EXPERIMENTAL_SILENCE": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "bench.bench_ppo", f"--{which}-worker", str(folder), str(steps)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise RuntimeError(
            f"bench_ppo {which} worker failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measurement(name: str, runs: list[dict], peak: float) -> Measurement:
    return Measurement(name, [r["seconds"] for r in runs], runs[0]["episodes"], "episodes", peak)


def split(runs: list[dict]) -> dict:
    keys = [k for k in ("generation", "scoring", "optimisation", "gc") if k in runs[0]]
    med = {k: statistics.median(r[k] for r in runs) for k in ["seconds", *keys]}
    return {f"{k}_s": round(med[k], 2) for k in keys} | {
        f"{k}_pct": f"{med[k] / med['seconds']:.0%}" for k in keys
    }


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args(argv or [])
    ours, base, peaks = [], [], {"ours": 0.0, "trl": 0.0}
    with tempfile.TemporaryDirectory(prefix="bench-ppo-") as tmp:
        folder = Path(tmp) / "models"
        build_models(folder)
        site = install_trl(Path(tmp) / "trl")
        for _ in range(args.runs):  # alternate, so machine noise hits both sides
            with PeakRss() as rss:
                ours.append(run_worker("ours", folder, args.steps))
            peaks["ours"] = max(peaks["ours"], rss.peak_mb)
            with PeakRss() as rss:
                base.append(run_worker("trl", folder, args.steps, site))
            peaks["trl"] = max(peaks["trl"], rss.peak_mb)
    a, b = measurement("lmforge", ours, peaks["ours"]), measurement(f"trl {TRL_BASELINE}", base, peaks["trl"])
    so, sb = split(ours), split(base)
    no_gc = Measurement(
        f"trl {TRL_BASELINE} minus gc", [r["seconds"] - r["gc"] for r in base], b.units, b.unit, b.peak_rss_mb
    )
    rows = [
        row(
            "ppo_vs_trl_1.12_PPOTrainer",
            a,
            b,
            **{f"ours_{k}": v for k, v in so.items()},
            **{f"trl_{k}": v for k, v in sb.items()},
        ),
        row("ppo_vs_trl_1.12_minus_its_gc_collect", a, no_gc),
    ]
    rows[0]["ours_reward_scorer_s"] = round(statistics.median(r["reward_scorer"] for r in ours), 2)
    details = {
        "settings": SETTINGS
        | {
            "steps": args.steps,
            "prompts": N_PROMPTS,
            "threads": 1,
            "model": "Llama 2 layers, width 64, 4 heads, vocab 512; LoRA r=8 all-linear",
        },
        "runs": {"lmforge": ours, "trl": base},
        "split": {"lmforge": so, "trl": sb},
        "load_1m_at_end": round(os.getloadavg()[0], 2),
        "note": __doc__,
    }
    return save("ppo", rows, details)


if __name__ == "__main__":
    if sys.argv[1:2] in (["--ours-worker"], ["--trl-worker"]):
        worker = run_ours if sys.argv[1] == "--ours-worker" else trl_worker
        print(json.dumps(worker(Path(sys.argv[2]), int(sys.argv[3]))))
    else:
        main(sys.argv[1:])
