"""Where the per-shard work of the data stages (filter, dedup, scrub) runs. Never part of a stage hash:
the engine changes how fast a stage runs, not what it writes, so a run on a cluster reuses the cache of
a run on a laptop and the other way round."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ExecutionConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    engine: Literal["local", "dask"] = Field(
        "local",
        description="local: shards run in this process (with each stage's own `workers`); dask: one Prefect "
        "task run per shard on a Dask cluster (prefect-dask's DaskTaskRunner).",
    )
    dask_address: str | None = Field(
        None,
        description="Scheduler of a running Dask cluster (tcp://host:8786), whose workers see the artifacts "
        "root at the same path; unset: a LocalCluster is started for the run.",
    )
    dask_workers: int = Field(2, ge=1, le=1024, description="Worker processes of the LocalCluster.")
    dask_dashboard_address: str = Field(
        "127.0.0.1:0",
        description="Where the LocalCluster's dashboard listens (host:port; port 0: a free one). Loopback by "
        "default: it shows task details to anyone who can reach it; ':8787' opens it on every interface.",
    )
    dask_threads_per_worker: int = Field(
        1,
        ge=1,
        le=64,
        description="Threads per LocalCluster worker (1: the shard work is pure Python, GIL-bound).",
    )
