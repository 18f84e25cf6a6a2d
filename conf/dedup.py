"""Config of the `dedup` stage: exact then near-duplicate removal (MinHash + LSH, datasketch).

Exact duplicates share the hash of their normalized text. Near duplicates are found with MinHash
signatures of word n-gram shingles, indexed in a `datasketch.MinHashLSH` whose bands x rows datasketch
derives from `threshold` and `num_perm`; candidate pairs are (optionally) verified by estimated Jaccard
and resolved into clusters, each keeping one member: the longest text, then the lowest id.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from conf.base import StageConfig


class DictStorage(BaseModel):
    """The LSH index in this process's memory (datasketch's default)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    type: Literal["dict"] = "dict"

    def storage_config(self) -> dict[str, Any]:
        return {"type": "dict"}


class RedisStorage(BaseModel):
    """The LSH index in a Redis server, for corpora whose index outgrows memory (`pip install redis`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    type: Literal["redis"] = "redis"
    host: str = "localhost"
    port: int = Field(6379, ge=1, le=65535)
    db: int = Field(0, ge=0)
    password_env: str = Field(
        "LMFORGE_REDIS_PASSWORD",
        description="Environment variable holding the Redis password, if the server needs one. Never the "
        "password itself: the config is logged to MLflow with every run.",
    )
    basename: str | None = Field(
        None, description="Key prefix in Redis; default: a fresh random one per run, deleted at the end."
    )

    def describe(self, password: str | None = None) -> str:
        """Where the index lives and where its password comes from (never the password), for errors.

        `password` is what the stage read from `$password_env`: conf never reads the environment.
        """
        given = "set" if password else "not set"
        where = f"Redis at {self.host}:{self.port} db {self.db}"
        return f"the LSH index in {where} (password from ${self.password_env}: {given})"

    def storage_config(self, password: str | None = None) -> dict[str, Any]:
        """datasketch's `storage_config`; `password` (read by the stage from `$password_env`) if any."""
        redis: dict[str, Any] = {"host": self.host, "port": self.port, "db": self.db}
        if password:
            redis["password"] = password
        config: dict[str, Any] = {"type": "redis", "redis": redis}
        if self.basename:
            config["basename"] = self.basename.encode()
        return config


def _storage_type(value: Any) -> str:
    """The `type` tag; absent means the default, dict (so `lsh_storage.host=...` alone says what is wrong)."""
    return value.get("type", "dict") if isinstance(value, dict) else getattr(value, "type", "dict")


LshStorage = Annotated[
    Annotated[DictStorage, Tag("dict")] | Annotated[RedisStorage, Tag("redis")], Discriminator(_storage_type)
]


class DedupConfig(StageConfig):
    """The `dedup` stage's settings, and dedup's only statement of its defaults: the detection parameters
    (`tasks.dedup.core.Params`) and the `lmforge dedup` command's option defaults are read from here."""

    NOT_RESULT_AFFECTING: ClassVar[frozenset[str]] = frozenset(
        {"workers", "batch_size", "lsh_storage", "method", "max_memory_mb"}
    )

    normalize: bool = Field(True, description="Lowercase and collapse whitespace before exact hashing.")
    near: bool = Field(True, description="Also remove near duplicates (MinHash LSH); false: exact only.")
    ngram: int = Field(
        5, ge=1, le=64, description="Words per shingle (texts shorter than this are one shingle)."
    )
    num_perm: int = Field(128, ge=8, le=1024, description="MinHash permutations (signature length).")
    threshold: float = Field(
        0.8, gt=0, lt=1, description="Jaccard similarity from which texts are near duplicates."
    )
    verify: bool = Field(
        True, description="Keep only LSH candidate pairs whose estimated Jaccard reaches `threshold`."
    )
    false_negative_weight: float = Field(
        0.8,
        gt=0,
        lt=1,
        description="Weight of missed pairs (vs. false candidates: 1 - it) in datasketch's choice of "
        "bands x rows. 0.5 is datasketch's default; higher finds more near duplicates, whose false "
        "candidates `verify` drops.",
    )
    seed: int = Field(1, ge=0, description="Seed of the MinHash permutations.")
    sample_pairs: int = Field(
        20, ge=0, description="Near-duplicate pairs shown in the report with true Jaccard."
    )
    max_removed_share: float = Field(
        0.5, ge=0, le=1, description="Quality gate: fail if more than this share of documents is removed."
    )
    workers: int = Field(
        1, ge=1, le=256, description="Processes computing signatures (same result for any value)."
    )
    batch_size: int = Field(1000, ge=1, description="Documents per signature batch sent to a worker.")
    lsh_storage: LshStorage = Field(
        default_factory=DictStorage, description="Where the in-memory method's LSH index lives."
    )
    method: Literal["auto", "memory", "disk"] = Field(
        "auto",
        description="memory: every signature and a datasketch LSH index in this process (fastest; about "
        "7 KB per document); disk: signatures, LSH buckets and clusters as sorted partitions on disk, each "
        "step a map over shards or partitions, peak memory set by max_memory_mb whatever the corpus; auto: "
        "disk when the memory method would need more than max_memory_mb. Both give the same output.",
    )
    max_memory_mb: int = Field(
        1024,
        ge=64,
        description="Memory budget of the disk method: its partitions are sized so that the local pool's "
        "`workers` together hold at most this much partition data (on Dask: each task); every Python "
        "process adds ~150 MB of libraries. Also auto's switch point.",
    )

    @model_validator(mode="after")
    def _lsh_has_bands(self) -> DedupConfig:
        """datasketch derives bands x rows from threshold and num_perm; MinHashLSH refuses a single band."""
        if self.near:
            from datasketch.lsh import _optimal_param

            b, r = _optimal_param(
                self.threshold, self.num_perm, 1 - self.false_negative_weight, self.false_negative_weight
            )
            if b < 2:
                raise ValueError(
                    f"threshold={self.threshold} with num_perm={self.num_perm} (false_negative_weight="
                    f"{self.false_negative_weight}) gives datasketch's MinHashLSH "
                    f"a single band (b={b}, r={r}) and it needs 2+: lower threshold or raise num_perm"
                )
        return self
