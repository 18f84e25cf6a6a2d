"""`make gpu-check` (`infra/gpu_check.py`): the GPU plan is the `small` model with NCCL-era features on
every GPU; the CPU fallback (gloo, fp32, FSDP2 over 2 processes, tiny sizes) runs end to end here."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from conf.loader import load_config

REPO = Path(__file__).resolve().parent.parent


def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "infra" / "gpu_check.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


def test_the_gpu_plan_is_the_small_model_sharded_in_bf16_and_compiled():
    preset, overrides = gpu_check().plan(8)
    cfg = load_config(preset, overrides=overrides)
    small = load_config("small")
    p = cfg.pretrain
    assert (p.n_layers, p.d_model, p.seq_len) == (small.pretrain.n_layers, small.pretrain.d_model, 1024)
    assert (p.device, p.nproc_per_node, p.parallel, p.precision, p.compile) == (
        "cuda",
        8,
        "fsdp",
        "bf16",
        True,
    )
    assert p.max_steps <= 30 and cfg.sft.max_steps and cfg.ppo.steps == 1
    preset, overrides = gpu_check().plan(0)
    cpu = load_config(preset, overrides=overrides).pretrain
    assert (cpu.device, cpu.nproc_per_node, cpu.parallel, cpu.precision, cpu.compile) == (
        "cpu",
        2,
        "fsdp",
        "fp32",
        False,
    )
    assert cpu.d_model <= 64


@pytest.mark.slow
def test_cpu_fallback_runs_pretrain_sft_and_ppo(tmp_path, prefect_harness, capsys):
    module = gpu_check()
    if module.describe_devices()[0]:
        pytest.skip("a GPU is present: `make gpu-check` runs the GPU plan")
    assert module.main(["--root", str(tmp_path), "--budget-seconds", "900"]) == 0
    figures = json.loads((tmp_path / "gpu_check.json").read_text())
    pre = figures["stages"]["pretrain"]
    assert pre["world_size"] == 2 and pre["parallel"] == "fsdp" and pre["precision"] == "fp32"
    assert 0 < pre["mfu"] < 1 and pre["peak_memory_gib"] > 0 and pre["tokens_per_s"] > 0
    assert set(figures["stages"]) == {"tokenizer", "pretrain", "sft", "reward", "ppo"}
    out = capsys.readouterr().out
    assert "MFU" in out and "gpu-check: OK" in out
