"""sft: prompt tokens are masked from the loss, training lowers the loss, outputs load again."""

from __future__ import annotations

import pytest

from conf.sft import SftConfig
from tasks.common.jsonl import write_jsonl
from tasks.common.models import load_causal_lm, load_tokenizer
from tasks.common.tracking import MetricLogger
from tasks.common.training import load_records
from tasks.sft import build_trainer, sft
from tests.helpers import seal
from tests.tiny_models import single_thread, tiny_lm_folder

FACTS = [
    ("add", "Return the sum of a and b."),
    ("neg", "Return the negation of x."),
    ("upper", "Return the string in upper case."),
    ("sort", "Sort the list in place."),
]


class RecordingLogger(MetricLogger):
    def __init__(self):
        self.metrics: list[tuple[int | None, dict]] = []
        self.tables: dict[str, dict] = {}

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, dict(metrics)))

    def log_table(self, data, artifact_file):
        self.tables[artifact_file] = dict(data)


def records(n_repeat: int = 1) -> list[dict]:
    return [
        {
            "id": name,
            "module": "m",
            "prompt": [{"role": "user", "content": f"What does `{name}` do?"}],
            "completion": [{"role": "assistant", "content": answer}],
        }
        for name, answer in FACTS
    ] * n_repeat


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    tiny_lm_folder(
        root / "pretrain" / "model", texts=[a for _, a in FACTS] + [f"What does {n} do?" for n, _ in FACTS]
    )
    pretrain = seal(root / "pretrain", "pretrain")
    write_jsonl(root / "align" / "sft" / "train.jsonl", records(4))
    write_jsonl(root / "align" / "sft" / "eval.jsonl", records())
    return root, {"pretrain": pretrain, "align_data": seal(root / "align", "align_data")}


CFG = SftConfig(
    max_steps=24, batch_size=4, learning_rate=1e-2, logging_steps=4, eval_steps=12, lr_scheduler="constant"
)


def test_prompt_tokens_are_masked_from_the_loss(upstream, tmp_path):
    _, inputs = upstream
    folder = inputs["pretrain"].dir / "model"
    tok = load_tokenizer(folder)
    train = load_records(inputs["align_data"], "sft/train.jsonl", None, ["prompt", "completion"])
    trainer = build_trainer(CFG, load_causal_lm(folder), tok, train, None, tmp_path, [])

    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    for row, rec in enumerate(records()[:2]):
        prompt_len = len(
            tok.apply_chat_template(
                rec["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True
            )["input_ids"]
        )
        ids, labels = batch["input_ids"][row], batch["labels"][row]
        n = int(batch["attention_mask"][row].sum())
        assert (labels[:prompt_len] == -100).all()  # every prompt token (and the assistant header) masked
        assert (labels[prompt_len:n] == ids[prompt_len:n]).all()  # every answer token trained
        assert (labels[n:] == -100).all()  # padding masked
        trained = tok.decode(ids[prompt_len:n])
        assert trained.startswith(rec["completion"][0]["content"]) and "<|eos|>" in trained


def test_cpu_plain_loss_equals_trl_fused_loss(upstream, tmp_path, monkeypatch):
    import tasks.sft as sft_module

    _, inputs = upstream
    folder = inputs["pretrain"].dir / "model"
    tok = load_tokenizer(folder)
    data = load_records(inputs["align_data"], "sft/eval.jsonl", None, ["prompt", "completion"])
    losses = {}
    for fused in (False, True):
        monkeypatch.setattr(sft_module, "has_cuda", lambda fused=fused: fused)  # picks the trainer class only
        trainer = build_trainer(CFG, load_causal_lm(folder), tok, data, data, tmp_path, [])
        assert (type(trainer).__name__ == "SFTTrainer") == fused
        losses[fused] = trainer.evaluate()
    assert losses[False]["eval_loss"] == pytest.approx(losses[True]["eval_loss"], rel=1e-5)
    assert losses[False]["eval_mean_token_accuracy"] == pytest.approx(
        losses[True]["eval_mean_token_accuracy"]
    )


def test_sft_lowers_the_loss_and_outputs_load_again(upstream, tmp_path):
    import torch
    from peft import PeftModel

    _, inputs = upstream
    log = RecordingLogger()
    report = sft(CFG, inputs, tmp_path, log)

    m = report.metrics
    assert m["eval_loss"] < m["eval_loss_before"] - 0.3
    assert m["train_loss_last"] < m["train_loss_first"]
    assert (
        report.counts["steps"] == 24
        and report.counts["train_pairs"] == 16
        and report.counts["eval_pairs"] == 4
    )
    assert 0 < report.counts["trainable_params"] < report.counts["params"]
    # the Trainer's logs reached our logger, per step, with tokens/s
    steps = [s for s, d in log.metrics if "train/loss" in d]
    assert steps == sorted(steps) and len(steps) >= 5
    assert any("eval/loss" in d for _, d in log.metrics) and any(
        "train/tokens_per_s" in d for _, d in log.metrics
    )
    assert len(log.tables["sft/samples.json"]["answer"]) == 4
    assert not (tmp_path / ".trainer").exists()

    tok = load_tokenizer(tmp_path / "model")
    merged = load_causal_lm(tmp_path / "model")
    base = load_causal_lm(inputs["pretrain"].dir / "model")
    adapted = PeftModel.from_pretrained(base, str(tmp_path / "adapter"))
    ids = tok.apply_chat_template(
        records()[0]["prompt"] + records()[0]["completion"],
        return_tensors="pt",
        return_dict=True,
        tokenize=True,
    )["input_ids"]
    with torch.no_grad():
        a, b = merged(ids).logits, adapted(ids).logits
        plain = load_causal_lm(inputs["pretrain"].dir / "model")(ids).logits
    assert torch.allclose(a, b, atol=1e-4)  # merged weights == base + adapter
    assert not torch.allclose(a, plain, atol=1e-3)  # and they differ from the base model
    assert merged.generation_config.eos_token_id == tok.eos_token_id == tok.convert_tokens_to_ids("<|eos|>")


def test_unknown_target_modules_fail_naming_the_key(upstream, tmp_path):
    _, inputs = upstream
    with pytest.raises(ValueError, match="sft.target_modules"):
        sft(SftConfig(target_modules=["c_attn"], max_steps=1), inputs, tmp_path, MetricLogger())
