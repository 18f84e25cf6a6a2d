"""Config validation: unknown keys, wrong types and impossible values fail early, naming the key."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from conf.loader import ConfigError, apply_override, available_presets, load_config, parse_override


def test_presets_load_and_are_frozen():
    assert {"tiny", "smoke", "small", "gpt2"} <= set(available_presets())
    for name in available_presets():
        assert load_config(name).preset == name
    cfg = load_config("tiny")
    assert cfg.preset == "tiny"
    with pytest.raises(ValidationError, match="frozen"):
        cfg.name = "other"


def test_smoke_extends_tiny():
    tiny, smoke = load_config("tiny"), load_config("smoke")
    assert smoke.name == "smoke" and smoke.collect.max_docs is not None
    assert smoke.collect.sources == tiny.collect.sources  # inherited


def test_unknown_key_names_path_and_allowed_keys():
    with pytest.raises(ConfigError) as e:
        load_config("tiny", overrides=["dedup.normalise=true"])
    msg = str(e.value)
    assert "dedup.normalise: unknown key" in msg
    assert "normalize" in msg  # the allowed keys are listed


def test_unknown_section():
    with pytest.raises(ConfigError, match="nosuchstage: unknown key"):
        load_config("tiny", overrides=["nosuchstage.x=1"])


def test_wrong_type_and_negative_size():
    with pytest.raises(ConfigError, match=r"collect\.shard_docs: .*greater than 0 \(got -5\)"):
        load_config("tiny", overrides=["collect.shard_docs=-5"])
    with pytest.raises(ConfigError, match=r"collect\.shard_docs"):
        load_config("tiny", overrides=["collect.shard_docs=lots"])


def test_literal_lists_allowed_values():
    with pytest.raises(ConfigError) as e:
        load_config("tiny", overrides=["collect.on_error=ignore"])
    assert "collect.on_error" in str(e.value) and "'skip'" in str(e.value) and "'fail'" in str(e.value)


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="unknown preset 'huge'.*tiny"):
        load_config("huge")


def test_override_parsing():
    assert parse_override("a.b.c=3") == (["a", "b", "c"], 3)
    assert parse_override("a=true") == (["a"], True)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    assert parse_override("a=x=y") == (["a"], "x=y")
    with pytest.raises(ConfigError):
        parse_override("novalue")
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_override({"a": 1}, ["a", "b"], 2)


def test_overrides_and_yaml_file(tmp_path):
    f = tmp_path / "my.yaml"
    f.write_text("dedup:\n  normalize: false\n")
    cfg = load_config("tiny", f, ["collect.max_docs=50"])
    assert cfg.dedup.normalize is False and cfg.collect.max_docs == 50
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config("tiny", bad)


def test_cli_reports_config_errors(capsys):
    from flows.cli import main

    assert main(["show-config", "--preset", "tiny", "--set", "dedup.bogus=1"]) == 2
    assert "dedup.bogus: unknown key" in capsys.readouterr().err


def test_unknown_key_inside_a_tagged_source_lists_its_fields():
    with pytest.raises(ConfigError) as e:
        load_config("tiny", overrides=["collect.sources=[{kind: pydocs, bogus: 1}]"])
    assert "collect.sources.0.pydocs.bogus: unknown key; allowed keys here:" in str(e.value)
    assert "min_chars" in str(e.value)
