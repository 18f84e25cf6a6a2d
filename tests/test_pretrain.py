"""The pretrain stage: real torchrun runs of a tiny Llama on CPU (DDP over gloo), checkpoints and resume,
multi-node rendezvous on localhost, NaN detection, and the saved model loading in transformers."""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import math
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conf.loader import ConfigError, load_config
from conf.pretrain import PretrainConfig
from conf.schema import PipelineConfig
from flows.stages import STAGES
from tasks.common.stage import run_stage
from tasks.common.tokens import TokenShardWriter
from tasks.common.tracking import MetricLogger, Tracker
from tasks.pretrain import PretrainError, pretrain
from tasks.pretrain import checkpoint as ckpt
from tasks.pretrain.data import GlobalBatches, TokenWindows, fit_micro_batch, rank_slice
from tasks.pretrain.flops import flops_per_token, gpu_peak_flops, measure_matmul_peak
from tasks.pretrain.join import main
from tasks.pretrain.launch import DivergedError, torchrun_command, worker_env, write_spec
from tasks.pretrain.parallel import param_digest
from tasks.pretrain.rendezvous import flow_over_file, rendezvous_file
from tasks.pretrain.train import FAULT_ENV, lr_lambda
from tests.helpers import seal

REPO = Path(__file__).resolve().parents[1]
# 2 layers, width 64, 32-token sequences, 16 steps of 512 tokens: a few seconds of training.
TINY = dict(
    n_layers=2,
    d_model=64,
    n_heads=2,
    seq_len=32,
    max_steps=16,
    global_batch_tokens=512,
    micro_batch_size=4,
    warmup_steps=2,
    eval_interval=8,
    eval_tokens=1024,
    checkpoint_interval=4,
    keep_checkpoints=2,
    log_interval=4,
    sample_tokens=8,
    threads_per_proc=1,
)


def tiny_cfg(**over) -> PretrainConfig:
    return PretrainConfig.model_validate({**TINY, **over})


def stdlib_texts() -> list[str]:
    texts = []
    for name in (
        "json",
        "os",
        "re",
        "collections",
        "functools",
        "pathlib",
        "argparse",
        "logging",
        "textwrap",
    ):
        for _, obj in inspect.getmembers(importlib.import_module(name)):
            doc = inspect.getdoc(obj)
            if doc and len(doc) > 100:
                texts.append(doc)
    return texts


@pytest.fixture(scope="module")
def tokens_stage(tmp_path_factory):
    """A finished tokenizer folder: a 512-token byte-level BPE and train/val token shards."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tok") / "tokenizer" / "test"
    texts = stdlib_texts()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    specials = ["<|bos|>", "<|eos|>", "<|pad|>"]
    bpe.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=512, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=specials[0],
        eos_token=specials[1],
        pad_token=specials[2],
        model_max_length=1024,
    )
    tok.save_pretrained(folder / "tokenizer")
    w = TokenShardWriter(
        folder,
        vocab_size=len(tok),
        eos_id=tok.eos_token_id,
        bos_id=tok.bos_token_id,
        pad_id=tok.pad_token_id,
        shard_tokens=40_000,
    )
    for i, text in enumerate(texts):
        w.write("val" if i % 20 == 0 else "train", tok(text).input_ids + [tok.eos_token_id])
    w.close()
    return seal(folder, "tokenizer")


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def ddp_run(tokens_stage, tmp_path_factory, mlflow_uri):
    """One uninterrupted 2-process DDP run, logged to a real MLflow run."""
    out = tmp_path_factory.mktemp("ddp")
    tracker = Tracker(mlflow_uri, "pretrain-tests")
    parent = tracker.start_pipeline("test", {}, {})
    logger = tracker.start_stage(parent.run_id, "pretrain", "test", {}, {})
    lines = _Lines()
    logging.getLogger("lmforge.pretrain").addHandler(lines)
    logging.getLogger("lmforge.pretrain").setLevel(logging.INFO)
    try:
        report = pretrain(tiny_cfg(), {"tokenizer": tokens_stage}, out, logger)
    finally:
        logging.getLogger("lmforge.pretrain").removeHandler(lines)
    tracker.end(logger)
    summary = json.loads((out / "train_summary.json").read_text())
    return {
        "out": out,
        "report": report,
        "summary": summary,
        "run_id": logger.run_id,
        "tracker": tracker,
        "lines": lines.lines,
    }


# --- config, data, schedule, FLOPs, checkpoints (no processes) -----------------------------------------


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="pretrain.d_model=100 must be a multiple of pretrain.n_heads=3"):
        load_config("smoke", overrides=["pretrain.d_model=100", "pretrain.n_heads=3"])
    with pytest.raises(ConfigError, match="does not split evenly over 3 processes"):
        load_config("smoke", overrides=["pretrain.nproc_per_node=3"])
    with pytest.raises(ConfigError, match="rdzv_endpoint"):
        load_config("smoke", overrides=["pretrain.nnodes=2"])
    with pytest.raises(ConfigError, match="pretrain.warmup_steps"):
        load_config("smoke", overrides=["pretrain.warmup_steps=60"])
    # launch settings do not change the stage hash; model and optimisation settings do
    base = PipelineConfig(pretrain=tiny_cfg())
    spec, inputs = STAGES["pretrain"], {}
    assert spec.hash_for(
        PipelineConfig(pretrain=tiny_cfg(nproc_per_node=4, micro_batch_size=2)), inputs
    ) == spec.hash_for(base, inputs)
    assert spec.hash_for(PipelineConfig(pretrain=tiny_cfg(lr=1e-3)), inputs) != spec.hash_for(base, inputs)


def test_token_windows_read_exact_offsets(tmp_path):
    w = TokenShardWriter(tmp_path, vocab_size=1000, eos_id=0, shard_tokens=25)
    w.write("train", np.arange(1, 21))
    w.write("train", np.arange(101, 131))  # spills: shard 0 = 1..20, 101..105; shard 1 = 106..130
    w.close()
    windows = TokenWindows(tmp_path, "train", seq_len=4)
    assert len(windows) == 6 + 6  # (25-1)//4 per shard: a window never crosses a shard boundary
    assert windows.window(1).tolist() == [5, 6, 7, 8, 9]
    assert windows.window(4).tolist() == [17, 18, 19, 20, 101] and windows.window(5).tolist() == [
        101,
        102,
        103,
        104,
        105,
    ]
    assert windows.window(6).tolist() == [106, 107, 108, 109, 110]
    x, y = windows.batch([0, 11])
    assert x.tolist() == [[1, 2, 3, 4], [126, 127, 128, 129]] and y.tolist() == [
        [2, 3, 4, 5],
        [127, 128, 129, 130],
    ]


def test_batch_order_does_not_depend_on_world_size():
    batches = GlobalBatches(n_windows=50, global_seqs=8, seed=3)
    for step in (0, 5, 6, 13):
        whole = batches.indices(step)
        for world in (1, 2, 4, 8):
            assert (
                np.concatenate([rank_slice(whole, r, world) for r in range(world)]).tolist() == whole.tolist()
            )
    # every window exactly once per epoch (steps 0..5 cover 48 of epoch 0; step 6 wraps into epoch 1)
    seen = np.concatenate([batches.indices(s) for s in range(6)])
    assert len(set(seen.tolist())) == 48
    assert GlobalBatches(50, 8, seed=4).indices(0).tolist() != batches.indices(0).tolist()
    assert fit_micro_batch(per_rank=12, wanted=5) == 4 and fit_micro_batch(7, 16) == 7


def test_lr_warmup_then_cosine_to_floor():
    f = lr_lambda(tiny_cfg(max_steps=100, warmup_steps=10, min_lr_ratio=0.1))
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.55) and f(100) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(10, 100))


def test_flops_and_peaks():
    # 6 FLOPs per matmul weight per token plus attention; an untied input embedding is a lookup
    assert (
        flops_per_token(1000, 200, tied=False, n_layers=2, d_model=8, seq_len=16) == 6 * 800 + 12 * 2 * 8 * 16
    )
    assert (
        flops_per_token(1000, 200, tied=True, n_layers=2, d_model=8, seq_len=16) == 6 * 1000 + 12 * 2 * 8 * 16
    )
    assert gpu_peak_flops("NVIDIA H100 PCIe") == 756e12 and gpu_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu_peak_flops("NVIDIA A100-SXM4-40GB") == 312e12 and gpu_peak_flops("Mystery GPU") is None
    assert measure_matmul_peak(torch.device("cpu"), n=128, seconds=0.02) > 1e6


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        ckpt.save_checkpoint(
            root, step, {"step": step, "w": torch.full((3,), float(step)), "rng": ckpt.rng_state()}, keep=2
        )
    (root / ".tmp-step-0000008-123").mkdir()  # a checkpoint being written when the run was killed
    assert [s for s, _ in ckpt.list_checkpoints(root)] == [4, 6]
    step, path = ckpt.latest_checkpoint(root)
    state = ckpt.load_checkpoint(path)  # weights_only=True
    assert step == 6 and state["w"].tolist() == [6.0, 6.0, 6.0]
    assert [p.name for p in ckpt.remove_partial(root)] == [".tmp-step-0000008-123"]
    torch.manual_seed(0)
    before = ckpt.rng_state()
    a = torch.rand(3)
    ckpt.set_rng_state(before)
    assert torch.equal(torch.rand(3), a)


def test_torchrun_command_and_env(tmp_path):
    single = torchrun_command(tiny_cfg(), tmp_path / "s.json", tmp_path, tmp_path / "logs")
    assert single[:3] == [sys.executable, "-m", "torch.distributed.run"] and "--standalone" in single
    assert "--nproc-per-node=2" in single and single[-4:-2] == ["-m", "tasks.pretrain.train"]
    static = torchrun_command(
        tiny_cfg(nnodes=2, node_rank=1, rdzv_endpoint="10.0.0.5:29500"), tmp_path, tmp_path, tmp_path
    )
    assert {"--rdzv-backend=static", "--master-addr=10.0.0.5", "--master-port=29500", "--node-rank=1"} <= set(
        static
    )
    c10d = torchrun_command(
        tiny_cfg(nnodes=2, rdzv_backend="c10d", rdzv_endpoint="h:1234"), tmp_path, tmp_path, tmp_path
    )
    assert {"--rdzv-backend=c10d", "--rdzv-endpoint=h:1234", "--rdzv-id=lmforge-pretrain"} <= set(c10d)
    env = worker_env(tiny_cfg(threads_per_proc=3), "run123", "sqlite:///x.db")
    assert env["OMP_NUM_THREADS"] == "3" and env["LMFORGE_MLFLOW_RUN_ID"] == "run123"
    assert env["MLFLOW_TRACKING_URI"] == "sqlite:///x.db" and str(REPO) in env["PYTHONPATH"]


def _worker_event(state: str, rank: int, exitcode: int | None) -> dict:
    """An agent worker event as torchrun prints it with `--event-log-handler=console`."""
    inner = {"local_rank": [rank], "exit_code": [exitcode], "worker_pid": [7731 + rank]}
    return {
        "name": f"torchelastic.worker.status.{state}",
        "source": "WORKER",
        "metadata": {"global_rank": rank, "state": state, "metadata": json.dumps(inner)},
    }


def _error_file(log_dir: Path, local_rank: int, error: str, timestamp: int) -> None:
    """An error file as `record` writes it for a rank that raised."""
    folder = log_dir / "run-id_x1" / "attempt_0" / str(local_rank)
    folder.mkdir(parents=True)
    trace = f'Traceback (most recent call last):\n  File "w.py", line 11, in main\n{error}\n'
    message = {"message": error, "extraInfo": {"py_callstack": trace, "timestamp": str(timestamp)}}
    (folder / "error.json").write_text(json.dumps({"message": message}))
    (folder / "stderr.log").write_text(f"step 3/10\n{error}\n")


def test_failure_report_names_the_rank_that_failed_first(tmp_path):
    from tasks.common.launch import failure_message, rank_failures

    closed = (
        "RuntimeError: [pair.cc:553] Connection closed by peer [127.0.0.1]:5508. "
        "This is typically caused by a remote worker crashing."
    )
    # rank 0 only saw its peer vanish (and was then stopped by the agent), a second earlier than rank 1's
    # real error: torchrun would call rank 0 the root cause
    _error_file(tmp_path, 0, closed, timestamp=100)
    _error_file(tmp_path, 1, "ValueError: boom on rank 1", timestamp=101)
    events = [_worker_event("FAILED", 0, -15), _worker_event("FAILED", 1, 1)]
    first = rank_failures(events, tmp_path)[0]
    assert (first.rank, first.exitcode, first.error) == (1, 1, "ValueError: boom on rank 1")
    # a gloo 'connection closed' error on a surviving rank is a consequence, not the cause
    events = [_worker_event("FAILED", 0, 1), _worker_event("FAILED", 1, 1)]
    assert rank_failures(events, tmp_path)[0].rank == 1
    # a rank killed by a signal leaves no error file: its exit code comes from the agent's event
    killed = rank_failures([_worker_event("FAILED", 0, -15), _worker_event("FAILED", 2, -9)], tmp_path)[0]
    assert (killed.rank, killed.signal, killed.error) == (2, "SIGKILL", None)
    msg = failure_message("pretrain", 1, rank_failures(events, tmp_path), tmp_path, [])
    assert msg.startswith(
        "pretrain workers failed (torchrun exit code 1): rank 1 (local rank 1) died with exit code 1"
    )
    assert "\nValueError: boom on rank 1\n" in msg
    assert "--- last lines of local rank 1 ---\nstep 3/10" in msg


# --- real torchrun runs ----------------------------------------------------------------------------


def test_ddp_ranks_end_identical_and_model_matches(ddp_run):
    from transformers import AutoModelForCausalLM

    s = ddp_run["summary"]
    assert s["world_size"] == 2 and s["parallel"] == "ddp" and s["steps"] == 16
    assert len(s["replica_digests"]) == 2 and len(set(s["replica_digests"])) == 1
    saved = AutoModelForCausalLM.from_pretrained(ddp_run["out"] / "model")
    assert param_digest(saved) == s["replica_digests"][0]
    # the workers' log lines reached the Python logger, tagged by rank
    assert any(ln.startswith("[default0]:") and "step 16/16" in ln for ln in ddp_run["lines"])


def test_loss_falls_and_metrics_reach_mlflow(ddp_run):
    report, out = ddp_run["report"], ddp_run["out"]
    assert report.counts == {"steps": 16, "tokens": 16 * 512, "parameters": ddp_run["summary"]["n_params"]}
    assert report.metrics["first/train_loss"] == pytest.approx(math.log(512), abs=0.1)  # uniform at init
    assert report.metrics["final/train_loss"] < report.metrics["first/train_loss"] - 0.5
    assert 0 < report.metrics["final/mfu"] < 2 and report.metrics["final/tokens_per_s"] > 0
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 17))
    assert [r["step"] for r in rows if "val_loss" in r] == [8, 16] and rows[-1]["val_loss"] < rows[7][
        "val_loss"
    ]
    client = ddp_run["tracker"].client
    history = client.get_metric_history(ddp_run["run_id"], "loss")
    assert sorted(m.step for m in history) == list(range(1, 17))
    assert {m.step for m in client.get_metric_history(ddp_run["run_id"], "val_loss")} == {8, 16}
    for name in ("lr", "grad_norm", "tokens_per_s", "flops_per_s", "mfu"):
        assert len(client.get_metric_history(ddp_run["run_id"], name)) == 16
    artifacts = {a.path for a in client.list_artifacts(ddp_run["run_id"], "model")}
    assert "model/model.safetensors" in artifacts and "model/tokenizer.json" in artifacts
    assert {a.path for a in client.list_artifacts(ddp_run["run_id"], "plots")} == {"plots/loss.png"}
    samples = [json.loads(ln) for ln in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [4, 4, 8, 8, 12, 12, 16, 16]
    assert not (out / "checkpoints").exists()  # dropped once the model is saved (keep_final_checkpoint=False)


def test_saved_model_loads_and_generates(ddp_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = ddp_run["out"] / "model"
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 2
    assert model.config.tie_word_embeddings and model.config.vocab_size == len(tok)
    assert model.generation_config.eos_token_id == tok.eos_token_id == model.config.eos_token_id
    ids = tok("def ", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 6 and tok.decode(out[0]).startswith("def ")


def test_killed_rank_fails_the_stage_and_rerun_resumes_to_the_same_loss(
    ddp_run, tokens_stage, tmp_path, monkeypatch
):
    spec, config = STAGES["pretrain"], PipelineConfig(pretrain=tiny_cfg())
    inputs = {"tokenizer": tokens_stage}
    monkeypatch.setenv(FAULT_ENV, "kill:1:10")  # rank 1 is SIGKILLed after step 10 (checkpoints at 4 and 8)
    with pytest.raises(PretrainError) as err:
        run_stage(spec, config, inputs, tmp_path)
    msg = str(err.value)
    assert "rank 1" in msg and "SIGKILL" in msg and "resumes from step 8" in msg
    out = tmp_path / "pretrain" / spec.hash_for(config, inputs)
    assert [s for s, _ in ckpt.list_checkpoints(out / "checkpoints")] == [4, 8] and not (
        out / "model"
    ).exists()

    monkeypatch.delenv(FAULT_ENV)
    result = run_stage(spec, config, inputs, tmp_path)  # the runner keeps the folder: the stage resumes
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed_from_step"] == 8 and result.manifest.counts["steps"] == 16
    assert summary["final_loss"] == pytest.approx(ddp_run["summary"]["final_loss"], abs=1e-6)
    assert summary["val_loss"] == pytest.approx(ddp_run["summary"]["val_loss"], abs=1e-6)
    assert summary["replica_digests"] == ddp_run["summary"]["replica_digests"]  # bit-identical weights
    rows = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows == list(range(1, 17))  # steps 9-10 of the killed run were replaced, not duplicated


def test_a_rank_that_raises_fails_the_stage_with_the_error_from_its_error_file(
    tokens_stage, tmp_path, monkeypatch
):
    """Rank 1 raises; rank 0 then only loses its peer. The stage error names rank 1 and carries its
    exception as `record` wrote it to torchrun's error file."""
    monkeypatch.setenv(FAULT_ENV, "raise:1:2")
    with pytest.raises(PretrainError) as err:
        pretrain(tiny_cfg(sample_tokens=0), {"tokenizer": tokens_stage}, tmp_path, MetricLogger())
    raised = f"RuntimeError: {FAULT_ENV}: rank 1 raised after step 2"
    assert not isinstance(err.value, DivergedError)
    first = err.value.failures[0]
    assert (first.rank, first.local_rank, first.exitcode, first.error) == (1, 1, 1, raised)
    assert "_maybe_fault" in first.traceback  # the rank's own traceback, from its error file
    lines = str(err.value).splitlines()
    assert lines[0].startswith("pretrain workers failed (torchrun exit code 1): rank 1 (local rank 1) died")
    assert lines[1] == raised and "--- last lines of local rank 1 ---" in lines


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tokens_stage, tmp_path):
    # A learning rate of 1e20 really diverges: step 1 is fine, step 2's gradients are NaN.
    cfg = tiny_cfg(lr=1e20, warmup_steps=0, checkpoint_interval=1, nproc_per_node=1, sample_tokens=0)
    with pytest.raises(DivergedError, match=r"non-finite loss or gradient at step 2.*step-0000001"):
        pretrain(cfg, {"tokenizer": tokens_stage}, tmp_path, MetricLogger())
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "checkpoints")] == [1]
    assert not (tmp_path / "model").exists() and not (tmp_path / "train_summary.json").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_node_rendezvous_on_localhost(ddp_run, tokens_stage, tmp_path):
    """Two torchrun invocations, one process each, meet at node 0's endpoint and train as one world."""
    cfg = tiny_cfg(nnodes=2, nproc_per_node=1, rdzv_endpoint=f"127.0.0.1:{_free_port()}")
    out = tmp_path / "out"
    out.mkdir()
    spec = write_spec(cfg, tokens_stage.dir, tokens_stage.dir / "tokenizer", tmp_path / "run_spec.json")
    node1 = subprocess.Popen(
        [sys.executable, "-m", "tasks.pretrain", f"--spec={spec}", f"--out={out}", "--node-rank=1"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        report = pretrain(cfg, {"tokenizer": tokens_stage}, out, MetricLogger())
        node1_log, _ = node1.communicate(timeout=120)
    finally:
        if node1.poll() is None:
            node1.kill()
    assert node1.returncode == 0, node1_log
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and report.counts["steps"] == 16
    # the same global batches as the single-node 2-process run, so the same result
    assert summary["final_loss"] == pytest.approx(ddp_run["summary"]["final_loss"], abs=1e-5)


def test_join_waits_for_node_0_and_times_out_naming_the_rendezvous_file(tmp_path, capsys):
    path = rendezvous_file(tmp_path, "lmforge-pretrain-x7k2p")
    assert path == tmp_path / "pretrain" / "rendezvous" / "lmforge-pretrain-x7k2p.json"
    with pytest.raises(SystemExit) as e:
        main(
            [
                "join",
                f"--artifacts-root={tmp_path}",
                "--rdzv-id=lmforge-pretrain-x7k2p",
                "--node-rank=1",
                "--timeout=0.2",
            ]
        )
    assert f"no rendezvous file {path}" in str(e.value.code) and "within 0.2 s" in str(e.value.code)
    with pytest.raises(ValueError, match=r"pretrain.rdzv_id='../x' must be a plain name"):
        rendezvous_file(tmp_path, "../x")


def test_join_exits_cleanly_when_node_0s_flow_ends_without_a_run(tmp_path, caplog):
    """Pod 0 marks its flow over (e.g. pretraining was cached): a waiting joiner stops at once, with 0."""
    over = flow_over_file(tmp_path, "lmforge-pretrain-x7k2p")
    assert over == tmp_path / "pretrain" / "rendezvous" / "lmforge-pretrain-x7k2p.over"
    over.parent.mkdir(parents=True)
    over.touch()
    started = time.monotonic()
    with caplog.at_level(logging.INFO):
        main(
            [
                "join",
                f"--artifacts-root={tmp_path}",
                "--rdzv-id=lmforge-pretrain-x7k2p",
                "--node-rank=1",
                "--timeout=60",
            ]
        )
    assert time.monotonic() - started < 10 and "without a pretraining run to join" in caplog.text


def test_joiner_finds_node_0s_stage_folder_through_the_rendezvous_file(ddp_run, tokens_stage, tmp_path):
    """Node 1 starts first, knowing only the artifacts root and the rendezvous id (as a Kubernetes pod
    does); node 0 runs the real stage into its content-addressed folder and announces it."""
    pretrain_cfg = tiny_cfg(
        nnodes=2, nproc_per_node=1, rdzv_endpoint=f"127.0.0.1:{_free_port()}", rdzv_id="job-1"
    )
    spec, config, inputs = (
        STAGES["pretrain"],
        PipelineConfig(pretrain=pretrain_cfg),
        {"tokenizer": tokens_stage},
    )
    announce = rendezvous_file(tmp_path, "job-1")
    node1 = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tasks.pretrain",
            "join",
            f"--artifacts-root={tmp_path}",
            "--rdzv-id=job-1",
            "--node-rank=1",
            "--timeout=120",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        result = run_stage(spec, config, inputs, tmp_path)
        node1_log, _ = node1.communicate(timeout=120)
    finally:
        if node1.poll() is None:
            node1.kill()
    assert node1.returncode == 0, node1_log
    out = tmp_path / "pretrain" / spec.hash_for(config, inputs)
    assert f"joining run job-1 as node 1: {out}" in node1_log
    # the launch fields leave the stage hash alone: the same folder as a single-node run of this config
    assert spec.hash_for(config, inputs) == spec.hash_for(PipelineConfig(pretrain=tiny_cfg()), inputs)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and result.manifest.counts["steps"] == 16
    assert summary["final_loss"] == pytest.approx(ddp_run["summary"]["final_loss"], abs=1e-5)
    assert not announce.exists()  # removed once node 0's torchrun ended: no late node joins a finished run


@pytest.mark.slow
def test_fsdp2_on_cpu_matches_ddp(ddp_run, tokens_stage, tmp_path):
    pretrain(tiny_cfg(parallel="fsdp"), {"tokenizer": tokens_stage}, tmp_path, MetricLogger())
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["parallel"] == "fsdp" and summary["replica_digests"] is None
    assert summary["final_loss"] == pytest.approx(ddp_run["summary"]["final_loss"], abs=1e-4)
