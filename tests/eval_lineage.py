"""A whole fake lineage for the evaluate/export tests: real files, real manifests, tiny real models.

    stages = build_lineage(tmp_path, tracker, parent_run_id)   # {stage name: Manifest}, DAG order

Document stages hold a few documents; align_data holds chat-format SFT/preference splits (rejected
kinds `other_object`, `truncated`, `generic`); the tokenizer stage holds a tiny byte-level BPE and token
shards; pretrain holds an untrained LlamaForCausalLM, sft the same model briefly trained on the train
tokens, ppo the SFT model trained a little further, and reward and judge two random one-label
LlamaForSequenceClassification models (different seeds). With a tracker, every stage also gets an MLflow
child run (params = config, metrics = the manifest's), as the runner would have made.

`collapsed_policy` makes a ppo stage whose policy gives every prompt the same answer (for the gates).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from tasks.common.alignment import EVAL_DOCUMENTS, GENERIC_ANSWERS, PREF_FILES, SFT_FILES
from tasks.common.artifacts import Manifest, write_manifest
from tasks.common.data import Document, ShardWriter
from tasks.common.jsonl import write_jsonl
from tasks.common.models import save_model_folder
from tasks.common.tokens import TokenShardWriter
from tests import helpers
from tests.tiny_models import tiny_llama, tiny_tokenizer

NAMES = [
    "join",
    "split",
    "loads",
    "dumps",
    "chain",
    "count",
    "sorted",
    "mean",
    "median",
    "quote",
    "parse",
    "walk",
]
MODULES = ["os.path", "json", "itertools", "statistics", "shlex", "urllib.parse", "ast", "textwrap"]
VERBS = ["Return", "Compute", "Build", "Split", "Join", "Parse", "Count"]
OBJECTS = [
    "the list of values",
    "a string path",
    "the parsed document",
    "an iterator of items",
    "the mean of data",
    "a mapping of names",
    "the quoted text",
    "every node of the tree",
]


def corpus(n: int = 240, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [
        f"{rng.choice(VERBS)} {rng.choice(OBJECTS)} for {rng.choice(NAMES)} in module {rng.choice(MODULES)}. "
        f"The result is {rng.choice(OBJECTS)}."
        for _ in range(n)
    ]


def seal(folder: Path, stage: str, inputs: dict[str, Manifest] | None = None, **fields) -> Manifest:
    """tests.helpers.seal with a per-stage hash, so every stage of the fake lineage is told apart."""
    return helpers.seal(folder, stage, inputs, stage_hash=f"test{stage[:8]}", **fields)


def train_lm(
    model, tokens: np.ndarray, steps: int, seed: int, block: int = 64, batch: int = 8, lr: float = 3e-3
):
    """A few AdamW steps of next-token prediction on random windows of `tokens`."""
    gen = torch.Generator().manual_seed(seed)
    data = torch.as_tensor(tokens.astype(np.int64))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(data) - block - 1, (batch,), generator=gen)
        x = torch.stack([data[s : s + block] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def messages(role: str, text: str) -> list[dict]:
    return [{"role": role, "content": text}]


REJECTED = ("other_object", "truncated", "generic")


def rejected_answer(kind: str, i: int, sents: list[str]) -> str:
    """The next prompt's sentence, the first half of this one (final period kept), or a stock answer."""
    if kind == "other_object":
        return sents[(i + 1) % len(sents)]
    if kind == "truncated":
        words = sents[i].split()
        return " ".join(words[: len(words) // 2]) + "."
    return GENERIC_ANSWERS[i % len(GENERIC_ANSWERS)]


def align_rows(split: str, sents: list[str]) -> tuple[list[dict], list[dict]]:
    """(SFT rows, preference rows) of one split: the chosen answer is the prompt's own sentence, the
    rejected one made by each of REJECTED in turn."""
    sft, prefs = [], []
    for i, s in enumerate(sents):
        prompt = messages("user", f"Summarize {NAMES[i % len(NAMES)]} in module {MODULES[i % len(MODULES)]}.")
        rec = {"id": f"{split}{i}", "module": MODULES[i % len(MODULES)], "prompt": prompt}
        sft.append({**rec, "completion": messages("assistant", s)})
        kind = REJECTED[i % len(REJECTED)]
        prefs.append(
            {
                **rec,
                "chosen": messages("assistant", s),
                "rejected": messages("assistant", rejected_answer(kind, i, sents)),
                "rejected_kind": kind,
            }
        )
    return sft, prefs


def build_lineage(
    root: Path, tracker=None, parent_run_id: str | None = None, sft_steps: int = 60
) -> dict[str, Manifest]:
    root = Path(root)
    texts = corpus()
    train_texts, val_texts = texts[:200], texts[200:]
    stages: dict[str, Manifest] = {}

    def docs_stage(
        name: str, upstream: str | None, docs: list[str], config: dict, counts: dict, metrics=None
    ):
        out = root / name / f"test{name[:8]}"
        with ShardWriter(out) as w:
            w.write_all(
                Document(id=f"d{i}", text=t, source="pydocs", meta={"module": "json"})
                for i, t in enumerate(docs)
            )
        ins = {upstream: stages[upstream]} if upstream else {}
        stages[name] = seal(out, name, ins, config=config, counts=counts, metrics=metrics or {}, seconds=0.5)

    docs_stage(
        "collect", None, texts, {"sources": [{"kind": "pydocs", "packages": ["stdlib"]}]}, {"documents": 240}
    )
    docs_stage("filter", "collect", texts, {"min_chars": 20}, {"documents_in": 240, "documents": 240})
    docs_stage(
        "dedup",
        "filter",
        texts,
        {"near": True},
        {"documents_in": 240, "exact_duplicates": 3, "documents": 237},
        {"removed_share": 0.0125},
    )
    docs_stage("scrub", "dedup", texts, {"emails": True}, {"documents": 237, "pii_email": 4, "pii_phone": 1})

    # align_data: prompts ask for a module's summary; the reference is a corpus sentence
    out = root / "align_data" / "testalign"
    for split, sents in {"train": train_texts[:40], "eval": val_texts[:16]}.items():
        sft, prefs = align_rows(split, sents)
        write_jsonl(out / SFT_FILES[split], sft)
        write_jsonl(out / PREF_FILES[split], prefs)
    write_jsonl(out / PREF_FILES["judge"], align_rows("judge", train_texts[40:60])[1])
    write_jsonl(out / EVAL_DOCUMENTS, [{"id": f"e{i}", "text": t} for i, t in enumerate(val_texts)])
    stages["align_data"] = seal(
        out,
        "align_data",
        {"scrub": stages["scrub"]},
        config={"eval_fraction": 0.2, "seed": 0},
        counts={"sft_train": 40, "sft_eval": 16, "prefs_train": 40, "prefs_eval": 16, "prefs_judge": 20},
        seconds=0.4,
    )

    # tokenizer: tokenizer + train/val token shards (documents joined by EOS)
    out = root / "tokenizer" / "testtok"
    tok = tiny_tokenizer(texts)
    tok.save_pretrained(str(out / "tokenizer"))
    writer = TokenShardWriter(out, len(tok), tok.eos_token_id, tok.bos_token_id, tok.pad_token_id)
    for split, sents in (("train", train_texts), ("val", val_texts)):
        for s in sents:
            writer.write(split, tok(s, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
    index = writer.close()
    n_train = sum(s["tokens"] for s in index["splits"]["train"])
    n_val = sum(s["tokens"] for s in index["splits"]["val"])
    stages["tokenizer"] = seal(
        out,
        "tokenizer",
        {"scrub": stages["scrub"], "align_data": stages["align_data"]},
        config={"vocab_size": 512},
        seconds=0.7,
        counts={"train_tokens": n_train, "val_tokens": n_val, "decontaminated_docs": 2},
    )
    train_tokens = np.fromfile(out / index["splits"]["train"][0]["file"], dtype=index["dtype"])

    # models
    base = tiny_llama(tok, seed=0)
    n_params = sum(p.numel() for p in base.parameters())
    out = root / "pretrain" / "testpre"
    save_model_folder(base, tok, out / "model")
    stages["pretrain"] = seal(
        out,
        "pretrain",
        {"tokenizer": stages["tokenizer"]},
        config={"lr": 0.003, "max_steps": 0, "block_size": 64},
        seconds=2.5,
        counts={"steps": 0, "tokens": 1000, "parameters": n_params},
        metrics={"final/train_loss": 6.2, "final/flops_per_s": 1.5e9, "final/mfu": 0.01},
        extra={"world_size": 1},
    )
    sft = train_lm(tiny_llama(tok, seed=0), train_tokens, sft_steps, seed=1)
    out = root / "sft" / "testsft"
    save_model_folder(sft, tok, out / "model")
    stages["sft"] = seal(
        out,
        "sft",
        {"pretrain": stages["pretrain"], "align_data": stages["align_data"]},
        config={"lr": 0.003, "lora_r": 8, "epochs": 1},
        metrics={"train/loss": 3.1},
        seconds=3.0,
    )
    rm = _reward_model(tok, seed=2)
    out = root / "reward" / "testrew"
    save_model_folder(rm, tok, out / "model")
    stages["reward"] = seal(
        out,
        "reward",
        {"sft": stages["sft"], "align_data": stages["align_data"]},
        config={"lr": 0.0001},
        metrics={"train/accuracy": 0.62},
        seconds=1.5,
    )
    out = root / "judge" / "testjudge"  # another random model: the judge disagrees with the reward model
    save_model_folder(_reward_model(tok, seed=5), tok, out / "model")
    stages["judge"] = seal(
        out,
        "judge",
        {"sft": stages["sft"], "align_data": stages["align_data"]},
        config={"lr": 0.0001, "seed": 1},
        metrics={"eval_accuracy": 0.58},
        seconds=1.2,
    )
    ppo = train_lm(sft, train_tokens, 10, seed=3, lr=1e-3)
    out = root / "ppo" / "testppo"
    save_model_folder(ppo, tok, out / "model")
    stages["ppo"] = seal(
        out,
        "ppo",
        {"sft": stages["sft"], "reward": stages["reward"], "align_data": stages["align_data"]},
        config={"lr": 1e-5, "kl_coef": 0.05, "ppo_epochs": 2, "algorithm": "ppo"},
        metrics={"ppo/reward": 0.3, "ppo/kl": 0.02},
        seconds=4.0,
    )
    if tracker is not None:
        # what the pretrain workers add to their run: the FLOPs model and the device
        extras = {"pretrain": ({"model.flops_per_token": 6.0 * n_params}, {"pretrain.device": "cpu"})}
        stages = {
            name: _track(tracker, parent_run_id, m, stages, *extras.get(name, ({}, {})))
            for name, m in stages.items()
        }
    return stages


def collapsed_policy(root: Path, stages: dict[str, Manifest], answer: str, steps: int = 60) -> Manifest:
    """A ppo stage whose policy answers every chat prompt with `answer`: the SFT model fine-tuned on
    (eval and train prompt, `answer`) conversations, as a policy that hacked its reward would."""
    from tasks.common.models import load_causal_lm, load_tokenizer

    sft_dir = stages["sft"].dir / "model"
    tok, model = load_tokenizer(sft_dir), load_causal_lm(sft_dir)
    prompts = [
        f"Summarize {n} in module {m}." for n in NAMES for m in MODULES
    ]  # every prompt the eval and train splits can hold
    seqs = [
        tok.apply_chat_template(
            messages("user", p) + messages("assistant", answer), tokenize=True, return_dict=True
        )["input_ids"]
        for p in prompts
    ]
    width = max(len(s) for s in seqs)
    ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in seqs])
    labels = ids.masked_fill(ids == tok.pad_token_id, -100)
    gen = torch.Generator().manual_seed(7)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        batch = torch.randint(0, len(seqs), (16,), generator=gen)
        loss = model(input_ids=ids[batch], labels=labels[batch]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = root / "ppo" / "testcollapsed"
    save_model_folder(model.eval(), tok, out / "model")
    return helpers.seal(
        out,
        "ppo",
        {"sft": stages["sft"], "reward": stages["reward"], "align_data": stages["align_data"]},
        stage_hash="testcollapsed",
        config={"algorithm": "ppo", "collapsed_to": answer},
        seconds=1.0,
    )


def _reward_model(tok, seed: int):
    from transformers import LlamaForSequenceClassification

    cfg = tiny_llama(tok).config
    cfg.num_labels = 1
    torch.manual_seed(seed)
    return LlamaForSequenceClassification(cfg)


def _track(
    tracker, parent_run_id: str, m: Manifest, stages: dict[str, Manifest], params: dict, tags: dict
) -> Manifest:
    """An MLflow child run for a hand-made stage, as `run_stage` (and the stage) would have logged it."""
    upstream = {name: stages[name] for name in m.inputs}
    logger = tracker.start_stage(parent_run_id, m.stage, m.stage_hash, upstream, {**m.config, **params})
    logger.set_tags(tags)
    logger.log_metrics(
        {**{f"count/{k}": v for k, v in m.counts.items()}, **m.metrics, "stage_seconds": m.seconds}
    )
    tracker.end(logger)
    m = m.model_copy(update={"mlflow_run_id": logger.run_id})
    return write_manifest(m)
