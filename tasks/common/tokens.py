"""Token shards: flat binary arrays of token ids (uint16, or uint32 for vocabularies over 65,535),
one file per shard, plus `tokens/index.json`. Documents are concatenated, each followed by EOS.
A split is one stream cut into shards of `shard_tokens`: a document may straddle two shards.

index.json::

    {"dtype": "uint16", "vocab_size": 4096, "eos_id": 1, "bos_id": 0, "pad_id": 2,
     "splits": {"train": [{"file": "tokens/train-00000.bin", "tokens": 123456}, ...],
                "val":   [{"file": "tokens/val-00000.bin",   "tokens": 4567}]}}

Trainers memory-map the shards (`np.memmap`), so a corpus larger than RAM costs nothing to open.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypedDict

import numpy as np

INDEX_FILE = "tokens/index.json"


class ShardEntry(TypedDict):
    """One shard of a split in `index.json`: its file (relative to the folder) and its token count."""

    file: str
    tokens: int


def dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32)


@dataclass
class TokenShardWriter:
    """Appends token id arrays to `<out>/tokens/<split>-NNNNN.bin`, rolling every `shard_tokens`."""

    out: Path
    vocab_size: int
    eos_id: int
    bos_id: int | None = None
    pad_id: int | None = None
    shard_tokens: int = 50_000_000
    splits: dict[str, list[ShardEntry]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        (self.out / "tokens").mkdir(parents=True, exist_ok=True)
        self.dtype = dtype_for(self.vocab_size)
        self._open: dict[str, tuple[BinaryIO, ShardEntry]] = {}

    def write(self, split: str, ids: np.ndarray | list[int]) -> None:
        """Append to the split's stream; an array larger than the room left spills into the next shard."""
        arr = np.asarray(ids)
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}); got {arr.min()}..{arr.max()}")
        arr = arr.astype(self.dtype, copy=False)
        while len(arr):
            fh, entry = self._current(split)
            room = self.shard_tokens - entry["tokens"]
            if room <= 0:
                self._close(split)
                continue
            fh.write(arr[:room].tobytes())
            entry["tokens"] += len(arr[:room])
            arr = arr[room:]

    def _current(self, split: str) -> tuple[BinaryIO, ShardEntry]:
        if split not in self._open:
            shards = self.splits.setdefault(split, [])
            rel = f"tokens/{split}-{len(shards):05d}.bin"
            entry: ShardEntry = {"file": rel, "tokens": 0}
            shards.append(entry)
            self._open[split] = (open(self.out / rel, "wb"), entry)
        return self._open[split]

    def _close(self, split: str) -> None:
        fh, _ = self._open.pop(split)
        fh.close()

    def close(self) -> dict[str, Any]:
        for split in list(self._open):
            self._close(split)
        index: dict[str, Any] = {
            "dtype": self.dtype.name,
            "vocab_size": self.vocab_size,
            "eos_id": self.eos_id,
            "bos_id": self.bos_id,
            "pad_id": self.pad_id,
            "splits": self.splits,
        }
        (self.out / INDEX_FILE).write_text(json.dumps(index, indent=2))
        return index


def read_index(folder: Path) -> dict[str, Any]:
    path = Path(folder) / INDEX_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: the folder has no token shards (run the tokenizer stage)")
    index: dict[str, Any] = json.loads(path.read_text())
    return index


def open_split(folder: Path, split: str) -> list[np.memmap]:
    """Memory-mapped arrays of one split's shards."""
    index = read_index(folder)
    if split not in index["splits"]:
        raise KeyError(f"{folder}/{INDEX_FILE} has no split {split!r}; it has {sorted(index['splits'])}")
    dtype = np.dtype(index["dtype"])
    return [
        np.memmap(Path(folder) / s["file"], dtype=dtype, mode="r", shape=(s["tokens"],))
        for s in index["splits"][split]
        if s["tokens"] > 0
    ]
