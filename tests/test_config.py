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


# ---- issue 15: files, numbers, duplicate keys and preset names -----------------------------------------


def test_config_file_that_is_missing_a_folder_or_binary_is_a_clear_error(tmp_path, capsys):
    from flows.cli import main

    binary = tmp_path / "model.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    cases = {
        str(tmp_path / "nope.yaml"): "not found",
        str(tmp_path): "is a folder",
        str(binary): "not a YAML text file (byte 0x80 is not UTF-8)",
    }
    for path, problem in cases.items():
        assert main(["show-config", "--config", path]) == 2
        err = capsys.readouterr().err
        assert path in err and problem in err and "Traceback" not in err, err


@pytest.mark.parametrize(
    "override, path",
    [
        ("pretrain.lr=.inf", "pretrain.lr"),
        ("pretrain.min_lr_ratio=.nan", "pretrain.min_lr_ratio"),
        ("sft.warmup_ratio=-.inf", "sft.warmup_ratio"),
        ("collect.sources=[{kind: pydocs, weight: .inf}]", "collect.sources.0"),
    ],
)
def test_nan_and_infinity_are_rejected(override, path):
    with pytest.raises(ConfigError, match=rf"{path}"):
        load_config("tiny", overrides=[override])


def test_nan_and_infinity_in_a_yaml_file_are_rejected(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("pretrain:\n  lr: .inf\n")
    with pytest.raises(ConfigError, match=r"pretrain\.lr: must be a finite number \(got inf\)"):
        load_config("tiny", f)


def test_booleans_are_not_numbers():
    with pytest.raises(ConfigError, match=r"pretrain\.max_steps: expected a number, got true/false"):
        load_config("tiny", overrides=["pretrain.max_steps=true"])
    with pytest.raises(ConfigError, match=r"sft\.learning_rate"):
        load_config("tiny", overrides=["sft.learning_rate=false"])
    with pytest.raises(ConfigError, match=r"collect\.sources\.0\.max_docs"):
        load_config("tiny", overrides=["collect.sources=[{kind: pydocs, max_docs: true}]"])
    # booleans still set boolean fields, and numbers still set number fields
    cfg = load_config("tiny", overrides=["sft.bf16=true", "dedup.normalize=false", "pretrain.max_steps=700"])
    assert cfg.sft.bf16 is True and cfg.dedup.normalize is False and cfg.pretrain.max_steps == 700


def test_duplicate_yaml_keys_are_rejected_with_their_line(tmp_path):
    f = tmp_path / "dup.yaml"
    f.write_text("pretrain:\n  lr: 0.1\ndedup:\n  normalize: false\npretrain:\n  max_steps: 3\n")
    with pytest.raises(ConfigError, match=rf"{f}:5: duplicate key 'pretrain' \(first at line 1\)"):
        load_config("tiny", f)
    f.write_text("pretrain:\n  lr: 0.1\n  max_steps: 3\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=rf"{f}:4: duplicate key 'lr' \(first at line 2\)"):
        load_config("tiny", f)
    # a merge key (`<<`) may be overridden: that is what it is for
    f.write_text("x-base: &base {lr: 0.1, max_steps: 3}\npretrain:\n  <<: *base\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match="x-base: unknown key"):  # loads; only the anchor key is foreign
        load_config("tiny", f)


def test_presets_are_names_not_paths(tmp_path):
    outside = tmp_path / "x.yaml"
    outside.write_text("name: outside\n")
    for name in ("../../x", str(outside.with_suffix("")), "presets/tiny", "tiny/../tiny"):
        with pytest.raises(ConfigError, match="unknown preset .*available presets: .*tiny"):
            load_config(name)


def test_a_preset_extending_itself_is_an_error(tmp_path, monkeypatch):
    import conf.loader as loader

    (tmp_path / "a.yaml").write_text("extends: b\n")
    (tmp_path / "b.yaml").write_text("extends: a\n")
    monkeypatch.setattr(loader, "PRESETS_DIR", tmp_path)
    with pytest.raises(ConfigError, match="preset 'a' extends itself: a -> b -> a"):
        load_config("a")
