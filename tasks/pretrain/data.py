"""Training batches from memory-mapped token shards.

A split is cut into windows of `seq_len + 1` tokens (inputs plus the next-token targets), which never
cross a shard boundary. Global batch `step` is a fixed function of (seed, step): the windows
`step * G ... step * G + G - 1` of a per-epoch seeded permutation. Each rank takes its own contiguous
slice of that global batch, so the data order does not depend on the number of ranks, and the data
position saved in a checkpoint is just the step.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from tasks.common.tokens import open_split


class TokenWindows:
    """Non-overlapping `seq_len + 1`-token windows over one split's shards (memory-mapped, read lazily)."""

    def __init__(self, folder: Path, split: str, seq_len: int):
        self.seq_len = seq_len
        self.shards = open_split(folder, split)
        per_shard = [max(0, (len(s) - 1) // seq_len) for s in self.shards]
        self.starts = np.cumsum([0, *per_shard])
        self.tokens = int(sum(len(s) for s in self.shards))

    def __len__(self) -> int:
        return int(self.starts[-1])

    def window(self, i: int) -> np.ndarray:
        shard = int(np.searchsorted(self.starts, i, side="right")) - 1
        offset = (int(i) - int(self.starts[shard])) * self.seq_len
        return self.shards[shard][offset : offset + self.seq_len + 1]

    def batch(self, indices: np.ndarray | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), both (len(indices), seq_len) int64."""
        rows = np.stack([self.window(i) for i in indices]).astype(np.int64)
        t = torch.from_numpy(rows)
        return t[:, :-1], t[:, 1:]


class GlobalBatches:
    """Which windows make up global batch `step`: a stateless function of (seed, step)."""

    def __init__(self, n_windows: int, global_seqs: int, seed: int):
        if n_windows < 1:
            raise ValueError(
                "the train split has no complete window of seq_len + 1 tokens: lower pretrain.seq_len"
            )
        self.n = n_windows
        self.g = global_seqs
        self.seed = seed

    @lru_cache(maxsize=2)  # noqa: B019 - one sampler per run; holds at most two epochs' orders
    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def indices(self, step: int) -> np.ndarray:
        k = np.arange(step * self.g, (step + 1) * self.g, dtype=np.int64)
        epochs, pos = np.divmod(k, self.n)
        out = np.empty_like(k)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self.order(int(e))[pos[sel]]
        return out

    def epoch_of(self, step: int) -> float:
        return step * self.g / self.n


def rank_slice(indices: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This rank's contiguous part of a global batch."""
    per = len(indices) // world
    return indices[rank * per : (rank + 1) * per]


def micro_batches(indices: np.ndarray, micro: int) -> list[np.ndarray]:
    return [indices[i : i + micro] for i in range(0, len(indices), micro)]


def fit_micro_batch(per_rank: int, wanted: int) -> int:
    """The largest micro batch <= `wanted` that divides this rank's share (so every micro-step is full)."""
    for m in range(min(per_rank, wanted), 0, -1):
        if per_rank % m == 0:
            return m
    return 1


def val_indices(n: int, rank: int, world: int) -> np.ndarray:
    """The first `n` validation windows, dealt round-robin over ranks (the same set every pass)."""
    return np.arange(n)[rank::world]
