"""Model folders shared by the stages: find them in a manifest, load them offline, save them; and the
device and CPU threads a single-process stage computes with. This is the one way any stage loads a
model or tokenizer (a reward model: `tasks.common.reward_model`; trainer arguments:
`tasks.common.training`).

A model folder is a `save_pretrained` folder (safetensors) holding the tokenizer too, so trl, peft and
transformers load it with one path. Loading is always `local_files_only`: nothing reaches a hub.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tasks.common.artifacts import Manifest

log = logging.getLogger(__name__)


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def device() -> Any:
    """The device a single-process stage computes on: the first GPU when there is one, else the CPU."""
    import torch

    return torch.device("cuda" if has_cuda() else "cpu")


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with `n` intra-op CPU threads (None: leave torch's default), restored afterwards.

    Small models on a busy CPU train many times faster on one thread: idle OpenMP workers spin while
    other processes hold the cores.
    """
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def model_dir(manifest: Manifest, sub: str = "model") -> Path:
    """The `sub/` model folder of an upstream stage, checked against its manifest."""
    if f"{sub}/config.json" not in manifest.files:
        raise FileNotFoundError(
            f"stage {manifest.stage} ({manifest.path}) has no {sub}/config.json: "
            "it did not write a model folder"
        )
    return manifest.dir / sub


def tokenizer_dir(manifest: Manifest) -> Path:
    """The `tokenizer/` folder of the tokenizer stage (what decodes the token shards)."""
    if not manifest.files_under("tokenizer/"):
        raise FileNotFoundError(f"stage {manifest.stage} ({manifest.path}) has no tokenizer/ folder")
    return manifest.dir / "tokenizer"


def load_tokenizer(path: Path, require_chat_template: bool = True) -> Any:
    """The tokenizer saved in a model folder, with a pad token and (by default) a chat template."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tok.pad_token is None:
        raise ValueError(f"{path}: the tokenizer has no pad token; the tokenizer stage must define <|pad|>")
    if require_chat_template and not tok.chat_template:
        raise ValueError(f"{path}: the tokenizer has no chat_template; the tokenizer stage must set one")
    return tok


def load_causal_lm(path: Path, dtype: Any = None) -> Any:
    """A causal LM from a model folder, in fp32 unless told otherwise (training dtype: the trainer's job)."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        str(path), dtype=dtype or torch.float32, local_files_only=True
    )


def sync_special_ids(model: Any, tokenizer: Any) -> None:
    """Copy the tokenizer's pad/bos/eos ids into the model config and generation config."""
    ids = {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    for key, value in ids.items():
        if value is None:
            continue
        setattr(model.config, key, value)
        gen = getattr(model, "generation_config", None)
        if gen is not None:
            setattr(gen, key, value)


def save_model_folder(model: Any, tokenizer: Any, path: Path) -> Path:
    """`save_pretrained` the model (safetensors) and its tokenizer into one folder."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sync_special_ids(model, tokenizer)
    model.save_pretrained(str(path), safe_serialization=True)
    tokenizer.save_pretrained(str(path))
    return path


def count_parameters(model: Any, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
