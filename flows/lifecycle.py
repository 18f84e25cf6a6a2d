"""The lifecycle DAG as Prefect flows: the whole pipeline and the sub-flows that can run alone."""

from __future__ import annotations

from prefect import flow

from conf.schema import PipelineConfig
from flows.runner import PipelineRun, run_pipeline
from flows.stages import SUBFLOWS


@flow(name="lifecycle", log_prints=True)
def lifecycle(config: PipelineConfig, targets: list[str] | None = None) -> PipelineRun:
    """corpus -> filter -> dedup -> scrub -> tokenizer -> pretrain -> sft -> reward -> ppo -> evaluate -> export."""
    return run_pipeline(config, targets)


@flow(name="data", log_prints=True)
def data_flow(config: PipelineConfig) -> PipelineRun:
    """Collection, filters, dedup, PII scrubbing and the tokenizer, reusing cached stages."""
    return run_pipeline(config, SUBFLOWS["data"], run_name=f"{config.name}-data")


FLOWS = {"lifecycle": lifecycle, "data": data_flow}
