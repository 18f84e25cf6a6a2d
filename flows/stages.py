"""The stage registry: every lifecycle stage, in DAG order, with its upstream stages.

Adding a stage = writing its function in `tasks/` and one `StageSpec` line here.
"""

from __future__ import annotations

from tasks import collect, dedup
from tasks.common.stage import StageSpec

STAGES: dict[str, StageSpec] = {
    s.name: s
    for s in [
        StageSpec("collect", collect.collect, "collect", (), collect.STAGE_VERSION, retries=1, key_figure="documents"),
        StageSpec(
            "dedup", dedup.dedup, "dedup", ("collect",), dedup.STAGE_VERSION, retries=1,
            key_figure="documents", gate=dedup.gate,
        ),
    ]
}

# Sub-flows: the stages each one ends with (upstream stages run or come from cache).
SUBFLOWS: dict[str, list[str]] = {
    "data": [n for n in ("collect", "filter", "dedup", "scrub", "train_tokenizer") if n in STAGES],
}


def plan(targets: list[str] | None = None) -> list[str]:
    """The stages needed for `targets` (all when None), in DAG order."""
    if not targets:
        return list(STAGES)
    unknown = [t for t in targets if t not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; stages: {', '.join(STAGES)}")
    needed: set[str] = set()

    def visit(name: str) -> None:
        if name not in needed:
            needed.add(name)
            for up in STAGES[name].inputs:
                visit(up)

    for t in targets:
        visit(t)
    return [n for n in STAGES if n in needed]
