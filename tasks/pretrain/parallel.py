"""Process groups and model wrapping for the training ranks: DDP or FSDP2, gloo on CPU, nccl on GPU."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from conf.pretrain import PretrainConfig


@dataclass
class Dist:
    rank: int
    local_rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(cfg: PretrainConfig) -> Dist:
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("pretrain.device=cuda but torch sees no GPU; use pretrain.device=auto or cpu")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if "RANK" in os.environ:
        dist.init_process_group("nccl" if use_cuda else "gloo", device_id=device if use_cuda else None)
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s [rank{rank}] %(message)s", datefmt="%H:%M:%S"
    )
    return Dist(rank, local_rank, world, device)


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def wrap(model: torch.nn.Module, cfg: PretrainConfig, d: Dist) -> torch.nn.Module:
    """Compile, then FSDP2-shard (each decoder layer, then the root) or DDP-replicate across ranks."""
    fsdp = cfg.parallel == "fsdp" and d.world > 1
    if cfg.compile:  # per decoder layer under FSDP (as torchtitan does), else the whole model
        for layer in model.model.layers if fsdp else [model]:
            layer.compile()
    if fsdp:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(d.device.type, (d.world,))
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(
            model,
            device_ids=[d.local_rank] if d.device.type == "cuda" else None,
            gradient_as_bucket_view=True,
        )
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def micro_sync(model: torch.nn.Module, cfg: PretrainConfig, sync: bool):
    """Skip the gradient all-reduce on all but the last micro-step of an accumulation."""
    if cfg.parallel == "fsdp" and hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    if not sync and hasattr(model, "no_sync"):
        return model.no_sync()
    return contextlib.nullcontext()


def state_dicts(model, optimizer) -> tuple[dict, dict]:
    """Full (unsharded) model and optimizer state dicts on rank 0 (empty elsewhere); a collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_state(model, optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(
        model,
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optimizer"],
        options=StateDictOptions(full_state_dict=True),
    )


def param_digest(model: torch.nn.Module) -> str:
    """sha256 of every parameter's bytes: equal digests mean bit-identical replicas."""
    h = hashlib.sha256()
    for name, t in sorted(unwrap(model).state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
