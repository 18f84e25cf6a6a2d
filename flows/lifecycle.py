"""The lifecycle DAG as Prefect flows: the whole pipeline and the sub-flows that can run alone.

Each flow takes the typed `PipelineConfig` (editable as a form in the Prefect UI for deployments); when
it is not given, the config is built from `preset` and `overrides` exactly as the CLI does.
"""

from __future__ import annotations

from prefect import flow

from conf.loader import load_config
from conf.schema import PipelineConfig
from flows.runner import PipelineRun, run_pipeline
from flows.stages import SUBFLOWS


def resolve_config(config: PipelineConfig | None, preset: str, overrides: list[str] | None) -> PipelineConfig:
    if config is not None:
        return config
    return load_config(preset, overrides=overrides or [])


@flow(name="lifecycle", log_prints=True)
def lifecycle(
    config: PipelineConfig | None = None,
    targets: list[str] | None = None,
    preset: str = "tiny",
    overrides: list[str] | None = None,
) -> PipelineRun:
    """corpus -> filter -> dedup -> scrub -> tokenizer -> pretrain -> sft -> reward -> ppo -> evaluate -> export."""
    return run_pipeline(resolve_config(config, preset, overrides), targets)


def _subflow(name: str):
    @flow(name=name, log_prints=True)
    def subflow(
        config: PipelineConfig | None = None, preset: str = "tiny", overrides: list[str] | None = None
    ) -> PipelineRun:
        cfg = resolve_config(config, preset, overrides)
        return run_pipeline(cfg, SUBFLOWS[name], run_name=f"{cfg.name}-{name}")

    subflow.__doc__ = f"The {name} sub-flow: {', '.join(SUBFLOWS[name]) or '(no stages yet)'}, reusing cached upstream stages."
    return subflow


data_flow = _subflow("data")
pretrain_flow = _subflow("pretrain")
align_flow = _subflow("align")
evaluate_flow = _subflow("evaluate")

FLOWS = {"lifecycle": lifecycle, "data": data_flow, "pretrain": pretrain_flow, "align": align_flow,
         "evaluate": evaluate_flow}
