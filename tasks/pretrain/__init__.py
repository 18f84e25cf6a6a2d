"""Stage `pretrain`: a Llama-style decoder trained from scratch on the token shards, under torchrun.

model.py      the LlamaForCausalLM built from the config's dials
data.py       memory-mapped token windows and the rank-independent batch order
parallel.py   process groups, DDP / FSDP2 wrapping
flops.py      FLOPs per token, peak FLOP/s (GPU datasheet or measured CPU matmul peak), MFU
checkpoint.py atomic checkpoints and RNG states
metrics.py    rank 0's metric stream (JSONL + MLflow)
train.py      the torchrun entry point (one process per rank)
launch.py     the run spec, this node's torchrun command, and the stage's errors
stage.py      the stage function (node 0): train, plot, report, gate
plot.py       the loss curves
rendezvous.py the files by which node 0 announces its run to nodes that start before it
join.py       `python -m tasks.pretrain`: another node joins a multi-node run
"""

from tasks.pretrain.launch import PretrainError
from tasks.pretrain.stage import gate, pretrain

STAGE_VERSION = 1

__all__ = ["STAGE_VERSION", "PretrainError", "gate", "pretrain"]
