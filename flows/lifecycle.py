"""The lifecycle DAG as Prefect flows: the whole pipeline and the sub-flows that can run alone.

Each flow takes the typed `PipelineConfig` (editable as a form in the Prefect UI for deployments); when
it is not given, the config is built from `preset` and `overrides` exactly as the CLI does. Either way,
`--set`-style overrides in the environment variable `LMFORGE_SET` are applied last (see `resolve_config`).
"""

from __future__ import annotations

import logging
import os
import shlex

from prefect import Flow, flow
from pydantic import ValidationError

from conf.loader import ConfigError, apply_override, format_validation_error, load_config, parse_override
from conf.schema import PipelineConfig
from flows.report import publish_summary
from flows.runner import PipelineRun, run_pipeline
from flows.stages import SUBFLOWS

log = logging.getLogger(__name__)
ENV_OVERRIDES = "LMFORGE_SET"


def env_overrides() -> list[str]:
    """The `key=value` items of `$LMFORGE_SET`, split on whitespace (shell quoting keeps a value whole)."""
    return shlex.split(os.environ.get(ENV_OVERRIDES, ""))


def resolve_config(config: PipelineConfig | None, preset: str, overrides: list[str] | None) -> PipelineConfig:
    """The flow's config: `config` as given, else `preset` + `overrides`; then the `LMFORGE_SET` overrides.

    `LMFORGE_SET` holds whitespace-separated `section.key=value` items, the same syntax as `--set`
    (values parsed as YAML), applied last and validated like them; an error names `LMFORGE_SET` and the
    key. It lets the infrastructure that starts a flow run set launch fields the deployment cannot know,
    e.g. the Kubernetes job template's `pretrain.nnodes=2 pretrain.rdzv_endpoint=<pod 0>:29400`.
    """
    cfg = config if config is not None else load_config(preset, overrides=overrides or [])
    items = env_overrides()
    if not items:
        return cfg
    data = cfg.model_dump()
    try:
        for item in items:
            data = apply_override(data, *parse_override(item))
        cfg = PipelineConfig.model_validate(data)
    except ConfigError as e:
        raise ConfigError(f"{ENV_OVERRIDES}: {e}") from None
    except ValidationError as e:
        raise ConfigError(f"{ENV_OVERRIDES}: {format_validation_error(e)}") from None
    log.info("applied %d override(s) from $%s: %s", len(items), ENV_OVERRIDES, " ".join(items))
    return cfg


@flow(name="lifecycle", log_prints=True)
def lifecycle(
    config: PipelineConfig | None = None,
    targets: list[str] | None = None,
    preset: str = "tiny",
    overrides: list[str] | None = None,
) -> PipelineRun:
    """corpus -> filter -> dedup -> scrub -> tokenizer -> pretrain -> sft -> reward -> ppo -> evaluate
    -> export (with `targets`: only the stages they need)."""
    run = run_pipeline(resolve_config(config, preset, overrides), targets)
    publish_summary(run)  # the flow run's Artifacts tab: stages, judged figures, gates, links
    return run


def _subflow(name: str) -> Flow[[PipelineConfig | None, str, list[str] | None], PipelineRun]:
    @flow(name=name, log_prints=True)
    def subflow(
        config: PipelineConfig | None = None, preset: str = "tiny", overrides: list[str] | None = None
    ) -> PipelineRun:
        cfg = resolve_config(config, preset, overrides)
        run = run_pipeline(cfg, SUBFLOWS[name], run_name=f"{cfg.name}-{name}")
        publish_summary(run)
        return run

    stages = ", ".join(SUBFLOWS[name]) or "(no stages yet)"
    subflow.__doc__ = f"The {name} sub-flow: {stages}, reusing cached upstream stages."
    return subflow


data_flow = _subflow("data")
pretrain_flow = _subflow("pretrain")
align_flow = _subflow("align")
evaluate_flow = _subflow("evaluate")

FLOWS: dict[str, Flow[..., PipelineRun]] = {
    "lifecycle": lifecycle,
    "data": data_flow,
    "pretrain": pretrain_flow,
    "align": align_flow,
    "evaluate": evaluate_flow,
}
