"""Config of the `pretrain` stage: a Llama-style decoder trained from scratch under torchrun.

Defaults fit the `tiny` preset (2 CPU cores, a couple of minutes). The data order depends only on
`seed` and the step, never on the number of processes, so the launch fields (processes, nodes,
rendezvous, micro batch, threads) do not change what the stage produces and stay out of its hash.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from conf.base import StageConfig


class PretrainConfig(StageConfig):
    # --- model: a LlamaForCausalLM built from these dials (vocab comes from the tokenizer) ---
    n_layers: int = Field(4, ge=1, description="Decoder layers (depth).")
    d_model: int = Field(128, ge=8, description="Hidden size (width).")
    n_heads: int = Field(4, ge=1, description="Attention heads; must divide d_model.")
    n_kv_heads: int | None = Field(None, ge=1, description="Key/value heads (GQA); default: n_heads.")
    intermediate_size: int | None = Field(
        None, ge=1, description="MLP width; default: 8/3 * d_model rounded up to a multiple of 64."
    )
    seq_len: int = Field(256, ge=8, description="Tokens per training sequence (context length).")
    tie_embeddings: bool = Field(True, description="Share the input embedding and the output head.")
    rope_theta: float = Field(10000.0, gt=0)
    init_std: float = Field(0.02, gt=0, le=1, description="Std of the normal weight init.")

    # --- optimisation ---
    seed: int = Field(1337, description="Seeds init, data order and sampling (rank r uses seed + r).")
    max_steps: int = Field(300, ge=1, description="Optimizer steps.")
    global_batch_tokens: int = Field(
        4096, ge=1, description="Tokens per optimizer step over all ranks (reached by gradient accumulation)."
    )
    micro_batch_size: int = Field(16, ge=1, description="Most sequences one rank runs in one forward pass.")
    lr: float = Field(3e-3, gt=0, description="Peak learning rate (AdamW).")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine decay ends at lr * min_lr_ratio.")
    warmup_steps: int = Field(30, ge=0, description="Linear warmup steps.")
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0, description="Max global gradient norm; 0 disables clipping.")

    # --- evaluation and samples ---
    eval_interval: int = Field(100, ge=1, description="Steps between validation passes (and one at the end).")
    eval_tokens: int = Field(
        32768, ge=1, description="Held-out tokens per validation pass (capped by the split)."
    )
    sample_prompts: list[str] = Field(
        default_factory=lambda: ["def ", "The "], description="Prompts sampled from at every checkpoint."
    )
    sample_tokens: int = Field(48, ge=0, description="New tokens per sample; 0 disables samples.")
    sample_temperature: float = Field(0.8, gt=0)
    sample_top_k: int = Field(50, ge=1)

    # --- checkpoints ---
    checkpoint_interval: int = Field(100, ge=1, description="Steps between checkpoints (resume points).")
    keep_checkpoints: int = Field(2, ge=1, description="Most recent checkpoints kept on disk.")
    keep_final_checkpoint: bool = Field(
        False,
        description="Keep the last checkpoint (with optimizer state) in the output to continue training.",
    )

    # --- runtime: devices, parallelism, launch ---
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available.")
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp", description="DDP replicas, or FSDP2 (fully_shard) sharding."
    )
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 autocast on GPU, fp32 on CPU."
    )
    compile: bool = Field(False, description="torch.compile the model.")
    nproc_per_node: int = Field(2, ge=1, description="Processes per node (one per GPU on GPU machines).")
    nnodes: int = Field(1, ge=1, description="Nodes in the run.")
    node_rank: int = Field(0, ge=0, description="This node's rank (node 0 writes the outputs).")
    rdzv_backend: Literal["static", "c10d"] = Field(
        "static", description="static: node_rank fixed and node 0 hosts the store; c10d: elastic rendezvous."
    )
    rdzv_endpoint: str | None = Field(
        None, description="host:port of node 0 for multi-node runs; single-node runs pick a free local port."
    )
    rdzv_id: str = Field("lmforge-pretrain", description="Rendezvous id shared by all nodes (c10d).")
    threads_per_proc: int | None = Field(
        None, ge=1, description="Intra-op CPU threads per process; default: CPU cores / nproc_per_node."
    )
    log_interval: int = Field(10, ge=1, description="Steps between progress lines and MLflow flushes.")

    # --- quality gate ---
    max_val_loss: float | None = Field(
        None, gt=0, description="Fail the stage if the final val loss is above this."
    )

    NOT_RESULT_AFFECTING: ClassVar[frozenset[str]] = frozenset(
        {
            "micro_batch_size",
            "compile",
            "nproc_per_node",
            "nnodes",
            "node_rank",
            "rdzv_backend",
            "rdzv_endpoint",
            "rdzv_id",
            "threads_per_proc",
            "log_interval",
            "keep_checkpoints",
        }
    )

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    @property
    def global_batch_seqs(self) -> int:
        return self.global_batch_tokens // self.seq_len

    @model_validator(mode="after")
    def _check(self) -> PretrainConfig:
        if self.d_model % self.n_heads:
            raise ValueError(
                f"pretrain.d_model={self.d_model} must be a multiple of pretrain.n_heads={self.n_heads}"
            )
        if self.n_kv_heads and self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"pretrain.n_heads={self.n_heads} must be a multiple of pretrain.n_kv_heads={self.n_kv_heads}"
            )
        if self.global_batch_tokens % self.seq_len:
            raise ValueError(
                f"pretrain.global_batch_tokens={self.global_batch_tokens} must be a multiple of "
                f"pretrain.seq_len={self.seq_len}"
            )
        if self.global_batch_seqs % self.world_size:
            raise ValueError(
                f"pretrain.global_batch_tokens={self.global_batch_tokens} is {self.global_batch_seqs} "
                f"sequences, which does not split evenly over {self.world_size} processes "
                f"(pretrain.nproc_per_node={self.nproc_per_node} x pretrain.nnodes={self.nnodes})"
            )
        if self.warmup_steps >= self.max_steps:
            raise ValueError(
                f"pretrain.warmup_steps={self.warmup_steps} must be below pretrain.max_steps={self.max_steps}"
            )
        if self.node_rank >= self.nnodes:
            raise ValueError(
                f"pretrain.node_rank={self.node_rank} must be below pretrain.nnodes={self.nnodes}"
            )
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError(
                "pretrain.rdzv_endpoint (host:port of node 0) is required when pretrain.nnodes > 1"
            )
        if self.rdzv_endpoint and not _is_host_port(self.rdzv_endpoint):
            raise ValueError(f"pretrain.rdzv_endpoint={self.rdzv_endpoint!r} must look like host:port")
        return self

    def ffn_size(self) -> int:
        if self.intermediate_size:
            return self.intermediate_size
        return -(-int(8 * self.d_model / 3) // 64) * 64


def _is_host_port(value: str) -> bool:
    host, _, port = value.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536
