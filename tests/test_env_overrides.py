"""`LMFORGE_SET`: `--set`-style overrides from the environment, applied last to every flow's config."""

from __future__ import annotations

import logging

import pytest

from conf.loader import ConfigError, load_config
from flows.lifecycle import resolve_config
from flows.stages import STAGES


def test_no_env_overrides_leaves_the_config_alone(monkeypatch):
    monkeypatch.delenv("LMFORGE_SET", raising=False)
    cfg = load_config("tiny")
    assert resolve_config(cfg, "smoke", None) is cfg
    assert resolve_config(None, "tiny", ["pretrain.max_steps=70"]) == load_config(
        "tiny", overrides=["pretrain.max_steps=70"]
    )


def test_env_overrides_apply_last_to_a_preset_and_to_a_typed_config(monkeypatch, caplog):
    monkeypatch.setenv(
        "LMFORGE_SET",
        "pretrain.nnodes=2  pretrain.rdzv_endpoint=job-0.lmforge-rdzv:29400\n"
        "pretrain.rdzv_id=job 'pretrain.sample_prompts=[Once upon, def ]' pretrain.max_steps=90",
    )
    with caplog.at_level(logging.INFO, logger="flows.lifecycle"):
        from_preset = resolve_config(None, "tiny", ["pretrain.max_steps=50", "pretrain.seed=3"])
    p = from_preset.pretrain
    assert (p.nnodes, p.rdzv_endpoint, p.rdzv_id, p.max_steps, p.seed) == (
        2,
        "job-0.lmforge-rdzv:29400",
        "job",
        90,
        3,
    )
    assert p.sample_prompts == ["Once upon", "def"] and from_preset.preset == "tiny"
    assert "applied 5 override(s) from $LMFORGE_SET: pretrain.nnodes=2" in caplog.text

    typed = load_config("smoke", overrides=["pretrain.seed=3"])
    cfg = resolve_config(typed, "tiny", ["ignored=1"])  # a typed config wins over preset/overrides
    assert cfg.preset == "smoke" and cfg.pretrain.seed == 3 and cfg.pretrain.nnodes == 2
    assert cfg.pretrain.max_steps == 90 and typed.pretrain.nnodes == 1  # the given config is not mutated


def test_launch_overrides_do_not_change_the_pretrain_stage_hash(monkeypatch):
    spec, base = STAGES["pretrain"], load_config("tiny")
    monkeypatch.setenv(
        "LMFORGE_SET",
        "pretrain.nnodes=2 pretrain.nproc_per_node=8 "
        "pretrain.rdzv_endpoint=lmforge-pretrain-x7k2p-0.lmforge-rdzv:29400 "
        "pretrain.rdzv_id=lmforge-pretrain-x7k2p",
    )
    launched = resolve_config(base, "tiny", None)
    assert launched.pretrain.world_size == 16
    assert spec.hash_for(launched, {}) == spec.hash_for(base, {})
    monkeypatch.setenv("LMFORGE_SET", "pretrain.seed=1")
    assert spec.hash_for(resolve_config(base, "tiny", None), {}) != spec.hash_for(base, {})


@pytest.mark.parametrize(
    "value, message",
    [
        (
            "pretrain.nnodes=2 pretrain.bogus=1",
            r"LMFORGE_SET: invalid configuration:\n  pretrain.bogus: unknown key; "
            r"allowed keys here: .*rdzv_id",
        ),
        ("pretrain.nnodes=two", r"LMFORGE_SET: invalid configuration:\n  pretrain.nnodes: .*integer.*'two'"),
        (
            "pretrain.nnodes=2",
            r"(?s)LMFORGE_SET: .*pretrain.rdzv_endpoint \(host:port of node 0\) is required",
        ),
        ("pretrain.nnodes", r"LMFORGE_SET: override 'pretrain.nnodes' must look like section.key=value"),
        ("pretrain.seed.x=1", r"LMFORGE_SET: cannot set pretrain.seed.x: pretrain.seed is a value"),
    ],
)
def test_bad_env_overrides_name_lmforge_set_and_the_key(monkeypatch, value, message):
    monkeypatch.setenv("LMFORGE_SET", value)
    for config in (None, load_config("tiny")):
        with pytest.raises(ConfigError, match=message):
            resolve_config(config, "tiny", None)
