"""Quantized exports of the policy, each written, loaded back in a second runtime, and measured.

Formats (`export.quantize`):

- `int8`: weight-only int8 (torchao's `Int8WeightOnlyConfig` through transformers' `TorchAoConfig`),
  saved as safetensors in `int8/` with the tokenizer; loaded back with `from_pretrained`.
- `gguf_f16`, `gguf_q8_0`: llama.cpp's format (`gguf/model-<type>.gguf`, tokenizer and chat template
  embedded; see `gguf_file`), loaded back by transformers' GGUF loader (`gguf_file=`), model and
  tokenizer both from the file alone.

Each is measured against the full-precision model on the same data: perplexity on the tokenizer
stage's validation shards (the evaluate stage's windows), greedy-token agreement on held-out prompts
(the align_data eval split, rendered with the training chat template), file size, and CPU tokens/s of
greedy generation. A format whose perplexity rises by more than `export.max_ppl_increase[format]` fails
the export's gate. The files live in the export stage's folder, so the manifest hashes them.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from conf.export import ExportConfig
from tasks.common.artifacts import Manifest, canonical_safetensors

log = logging.getLogger(__name__)
GGUF_FORMATS = {"gguf_f16": "f16", "gguf_q8_0": "q8_0"}


@dataclass
class Measured:
    """One model's figures on the shared validation windows and prompts."""

    ppl: float
    answers: list[list[int]]
    tokens_per_s: float
    file_bytes: int


# --- writing ----------------------------------------------------------------------------------------


def write_int8(model_folder: Path, dst: Path) -> Path:
    """`dst/`: the model with int8 weight-only Linear layers (torchao), safetensors, plus its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, TorchAoConfig

    from tasks.common.models import load_tokenizer

    quiet_torchao()
    from torchao.quantization import Int8WeightOnlyConfig

    model = AutoModelForCausalLM.from_pretrained(
        str(model_folder),
        dtype=torch.float32,
        quantization_config=TorchAoConfig(Int8WeightOnlyConfig()),
        local_files_only=True,
    )
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(dst), safe_serialization=True)
    for weights in sorted(dst.glob("*.safetensors")):  # a header in hash-seed order: same weights, same bytes
        canonical_safetensors(weights)
    load_tokenizer(model_folder).save_pretrained(str(dst))
    return dst


def write_format(fmt: str, model_folder: Path, out: Path, name: str) -> Path:
    """Write one format under the stage folder `out`; returns the file (GGUF) or folder (int8)."""
    if fmt == "int8":
        return write_int8(model_folder, out / "int8")
    from tasks.export.gguf_file import write_gguf

    (out / "gguf").mkdir(parents=True, exist_ok=True)
    kind = GGUF_FORMATS[fmt]
    return write_gguf(model_folder, out / "gguf" / f"model-{kind}.gguf", kind, name)


def quiet_torchao() -> None:
    """torchao logs a warning per CUDA kernel library it cannot load on a CPU machine: not our news."""
    logging.getLogger("torchao").setLevel(logging.ERROR)


# --- loading back -----------------------------------------------------------------------------------


def load_back(fmt: str, path: Path, reference_tok: Any) -> tuple[Any, Any]:
    """(model, tokenizer) read from the written file alone; the tokenizer must encode and template
    exactly as the training one does."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model: Any
    if fmt == "int8":
        quiet_torchao()
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32, local_files_only=True
        )
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    check_tokenizer(fmt, tok, reference_tok)
    model.eval()
    return model, tok


def check_tokenizer(fmt: str, tok: Any, reference: Any) -> None:
    """The loaded tokenizer must be the training one: same chat template, special ids and encodings."""
    from tasks.common.generation import chat_prompt_ids

    probe = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sum 1 + 2, é ü 中."}]
    checks = {
        "chat_template": (tok.chat_template, reference.chat_template),
        "special ids": (
            (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id),
            (reference.bos_token_id, reference.eos_token_id, reference.pad_token_id),
        ),
        "chat encoding": (
            chat_prompt_ids(tok, probe),
            chat_prompt_ids(reference, probe),
        ),
    }
    for what, (got, want) in checks.items():
        if got != want:
            raise ValueError(
                f"export {fmt}: the loaded tokenizer's {what} differs from the training tokenizer's"
            )


# --- measuring --------------------------------------------------------------------------------------


def measure(
    model: Any,
    windows: np.ndarray,
    prompts: list[list[int]],
    cfg: ExportConfig,
    eos: int,
    pad: int,
    size: int,
) -> Measured:
    """Perplexity on `windows`, greedy answers to `prompts` and their tokens/s (one thread: comparable
    across formats on a shared machine)."""

    from tasks.common.generation import generate_batched, generation_config
    from tasks.common.models import torch_threads
    from tasks.common.perplexity import nll_sum

    with torch_threads(1):
        nats, count = nll_sum(model, windows, cfg.verify_batch_size)
        gen = generation_config(eos, pad, cfg.verify_max_new_tokens)
        start = time.perf_counter()
        answers = generate_batched(model, prompts, gen, batch_size=1)
        seconds = time.perf_counter() - start
    tokens = sum(len(a) for a in answers)
    return Measured(math.exp(nats / count), answers, tokens / max(seconds, 1e-9), size)


def agreement(reference: list[list[int]], other: list[list[int]]) -> tuple[float, float]:
    """(share of greedy token positions where both models chose the same token, share of prompts with
    identical answers); positions past the shorter answer count as disagreements."""
    same = total = 0
    for a, b in zip(reference, other, strict=True):
        n = max(len(a), len(b))
        same += sum(x == y for x, y in zip(a, b, strict=False))
        total += n
    exact = sum(a == b for a, b in zip(reference, other, strict=True)) / max(len(reference), 1)
    return (same / total if total else 1.0), exact


def size_of(path: Path) -> int:
    return (
        path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.glob("*.safetensors"))
    )


# --- the data ---------------------------------------------------------------------------------------


def verification_data(
    cfg: ExportConfig, inputs: dict[str, Manifest], tok: Any, context: int
) -> tuple[np.ndarray, list[list[int]]]:
    """(validation windows, held-out chat prompts as token ids), both as the evaluate stage reads them
    and both within the model's `context` (a prompt keeps its end, where the answer starts)."""
    from tasks.common.alignment import SFT_FILES
    from tasks.common.generation import chat_prompt_ids
    from tasks.common.jsonl import read_jsonl
    from tasks.common.perplexity import read_val_tokens, val_windows

    for needed in ("tokenizer", "align_data"):
        if needed not in inputs:
            raise ValueError(f"export.quantize needs the {needed} stage's output to verify the exports")
    tokens, _ = read_val_tokens(inputs["tokenizer"])
    windows = val_windows(tokens, min(cfg.verify_block_size, context - 1), cfg.verify_val_tokens)
    rows = read_jsonl(inputs["align_data"].file(SFT_FILES["eval"]))[: cfg.verify_prompts]
    if not rows:
        raise ValueError("export.quantize needs held-out prompts: align_data wrote no SFT eval examples")
    room = max(context - cfg.verify_max_new_tokens, 8)
    prompts = [chat_prompt_ids(tok, r["prompt"], max_tokens=min(cfg.verify_block_size, room)) for r in rows]
    return windows, prompts


# --- the step ---------------------------------------------------------------------------------------


def quantized_exports(
    cfg: ExportConfig, inputs: dict[str, Manifest], out: Path, model_folder: Path
) -> tuple[dict[str, float], dict[str, Any], list[str]]:
    """Write, load back and measure every configured format: (metrics `export/<format>/...`, extra
    (paths and a table for the card), gate failures)."""
    if not cfg.quantize:
        return {}, {}, []
    from tasks.common.models import load_causal_lm, load_tokenizer

    tok = load_tokenizer(model_folder)
    reference = load_causal_lm(model_folder).eval()
    context = int(getattr(reference.config, "max_position_embeddings", 0) or cfg.verify_block_size + 1)
    windows, prompts = verification_data(cfg, inputs, tok, context)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    full = measure(reference, windows, prompts, cfg, eos, pad, size_of(model_folder))
    metrics = {
        "export/full/ppl": full.ppl,
        "export/full/tokens_per_s": full.tokens_per_s,
        "export/full/file_bytes": float(full.file_bytes),
    }
    files: dict[str, str] = {}
    failures: list[str] = []
    for fmt in cfg.quantize:
        path = write_format(fmt, model_folder, out, cfg.model_name)
        model, _ = load_back(fmt, path, tok)
        got = measure(model, windows, prompts, cfg, eos, pad, size_of(path))
        tokens, exact = agreement(full.answers, got.answers)
        change = got.ppl / full.ppl - 1.0
        metrics.update(
            {
                f"export/{fmt}/ppl": got.ppl,
                f"export/{fmt}/ppl_change": change,
                f"export/{fmt}/token_agreement": tokens,
                f"export/{fmt}/exact_match": exact,
                f"export/{fmt}/file_bytes": float(got.file_bytes),
                f"export/{fmt}/size_ratio": got.file_bytes / max(full.file_bytes, 1),
                f"export/{fmt}/tokens_per_s": got.tokens_per_s,
            }
        )
        files[fmt] = str(path.relative_to(out))
        limit = cfg.max_ppl_increase.get(fmt)
        if limit is not None and change > limit:
            failures.append(f"{fmt}: validation perplexity rose {change:.2%} (> {limit:.2%} allowed)")
        log.info(
            "export %s: ppl %+.3f%%, agreement %.3f, %d bytes", fmt, 100 * change, tokens, got.file_bytes
        )
    extra = {
        "quantized": files,
        "verify": {
            "val_windows": len(windows),
            "prompts": len(prompts),
            "max_new_tokens": cfg.verify_max_new_tokens,
        },
    }
    return metrics, extra, failures


def quantized_table(metrics: dict[str, float], formats: list[str], extra: dict[str, Any]) -> str:
    """The model card's table: one row per format, full precision first."""
    from tasks.export import table

    rows: list[tuple[Any, ...]] = [
        (
            "full precision (safetensors)",
            "model/",
            int(metrics["export/full/file_bytes"]),
            metrics["export/full/ppl"],
            "-",
            "-",
            metrics["export/full/tokens_per_s"],
        )
    ]
    for fmt in formats:
        rows.append(
            (
                fmt,
                extra["quantized"][fmt],
                int(metrics[f"export/{fmt}/file_bytes"]),
                metrics[f"export/{fmt}/ppl"],
                f"{metrics[f'export/{fmt}/ppl_change']:+.3%}",
                metrics[f"export/{fmt}/token_agreement"],
                metrics[f"export/{fmt}/tokens_per_s"],
            )
        )
    v = extra["verify"]
    return (
        f"Each file was loaded back in a second runtime (int8: transformers + torchao; GGUF: transformers' "
        f"GGUF loader, tokenizer and chat template read from the file) and measured against full precision: "
        f"perplexity on {v['val_windows']} validation windows, greedy-token agreement on {v['prompts']} "
        f"held-out prompts (up to {v['max_new_tokens']} new tokens), tokens/s of greedy decoding on one CPU "
        "thread.\n\n"
        + table(
            ("format", "file", "bytes", "perplexity", "perplexity change", "token agreement", "tokens/s"),
            rows,
        )
    )
