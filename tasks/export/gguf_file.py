"""Write a Llama model folder as a GGUF file (llama.cpp's format) with the `gguf` package.

The file carries everything a GGUF runtime needs to chat with the model exactly as training did: the
hyperparameters, the byte-level BPE vocabulary with its merges and special tokens (`tokenizer.ggml.*`),
and the training chat template (`tokenizer.chat_template`). Tensor names and the Q/K row order follow
llama.cpp's converter (`convert_hf_to_gguf.py`), which is what transformers' GGUF loader undoes.

Types: `f16` stores every matrix as float16; `q8_0` stores matrices as 8-bit blocks of 32 values with one
float16 scale each. Norm weights (vectors) stay float32 in both, as llama.cpp's converter keeps them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

GGUF_TYPES = ("f16", "q8_0")


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary layout for q_proj/k_proj rows (interleaved halves per head)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tensors(model_folder: Path, cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    """The folder's weights under GGUF names (float32 numpy), Q/K rows permuted."""
    import gguf
    from safetensors.numpy import load_file

    weights: dict[str, np.ndarray] = {}
    for f in sorted(model_folder.glob("*.safetensors")):
        weights.update({k: v.astype(np.float32) for k, v in load_file(f).items()})
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg["num_hidden_layers"])
    heads, kv_heads = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    out: dict[str, np.ndarray] = {}
    for key, w in weights.items():
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"{model_folder}: tensor {key} has no GGUF name (not a Llama checkpoint?)")
        if key.endswith("q_proj.weight"):
            w = permute_qk(w, heads)
        elif key.endswith("k_proj.weight"):
            w = permute_qk(w, kv_heads)
        out[name] = w
    return out


def vocabulary(tok: Any) -> tuple[list[str], list[int], list[str]]:
    """(tokens by id in the byte-level spelling, token types, merges as "a b")."""
    import gguf

    n = len(tok)
    tokens = tok.convert_ids_to_tokens(list(range(n)))
    special = set(tok.all_special_ids)
    types = [int(gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL) for i in range(n)]
    model = json.loads(tok.backend_tokenizer.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges


def write_gguf(model_folder: Path, path: Path, kind: str, name: str) -> Path:
    """`model_folder` (LlamaForCausalLM + tokenizer) as a `kind` ("f16" or "q8_0") GGUF file at `path`."""
    import gguf
    from gguf.quants import quantize

    from tasks.common.models import load_tokenizer

    if kind not in GGUF_TYPES:
        raise ValueError(f"unknown GGUF type {kind!r}; choose from {', '.join(GGUF_TYPES)}")
    cfg = json.loads((model_folder / "config.json").read_text())
    if cfg.get("model_type") != "llama":
        raise ValueError(f"{model_folder}: GGUF export supports Llama models, got {cfg.get('model_type')!r}")
    tok = load_tokenizer(model_folder)
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    w.add_name(name)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(cfg.get("num_key_value_heads") or heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-6))
    w.add_rope_freq_base(rope_theta(cfg))
    w.add_vocab_size(len(tok))
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if kind == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)
    tokens, types, merges = vocabulary(tok)
    w.add_tokenizer_model("gpt2")  # byte-level BPE
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    for add, value in (
        (w.add_bos_token_id, tok.bos_token_id),
        (w.add_eos_token_id, tok.eos_token_id),
        (w.add_pad_token_id, tok.pad_token_id),
    ):
        if value is not None:
            add(value)
    w.add_add_bos_token(False)
    w.add_chat_template(tok.chat_template)
    for tname, data in tensors(model_folder, cfg).items():
        if data.ndim == 1:
            w.add_tensor(tname, data.astype(np.float32))
        elif kind == "q8_0" and data.shape[-1] % 32 == 0:
            q = quantize(data, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(tname, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:  # f16, or a row length q8_0 blocks cannot tile
            w.add_tensor(tname, data.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def rope_theta(cfg: dict[str, Any]) -> float:
    """The RoPE base of a transformers config (v5 keeps it in `rope_parameters`)."""
    params = cfg.get("rope_parameters") or {}
    return float(params.get("rope_theta") or cfg.get("rope_theta") or 10000.0)
