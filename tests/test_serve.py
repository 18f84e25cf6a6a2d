"""`lmforge serve`: the real server (uvicorn on a free loopback port) driven by the official `openai`
client, on a tiny real model; guardrails, limits, registry resolution and the chat template."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conf.serve import GuardrailsConfig, ServeConfig
from tasks.common.generation import chat_prompt_ids
from tasks.serve.app import create_app
from tasks.serve.engine import Decoding, Engine, load_model, resolve_model
from tasks.serve.guardrails import Guardrails, Hits
from tests.tiny_models import single_thread, tiny_lm_folder

openai = pytest.importorskip("openai")

BLOCKED = "forbidden topic"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running(cfg: ServeConfig, engine: Engine) -> Iterator[str]:
    """The app under a real uvicorn server on a free loopback port; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(cfg, engine), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    return tiny_lm_folder(tmp_path_factory.mktemp("serve") / "model")


@pytest.fixture(scope="module")
def engine(model_folder) -> Engine:
    model, tok = load_model(model_folder)
    return Engine(model, tok, "tiny", threads=1)


@pytest.fixture(scope="module")
def base_url(engine) -> Iterator[str]:
    cfg = ServeConfig(
        model="unused",
        max_tokens_limit=32,
        default_max_tokens=8,
        max_body_bytes=4096,
        guardrails=GuardrailsConfig(blocked_terms=[BLOCKED]),
    )
    with single_thread(), running(cfg, engine) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60)


def greedy_reference(engine: Engine, messages: list[dict[str, str]], n: int) -> str:
    """What plain `model.generate` answers with the training chat template, greedy."""
    import torch

    ids = chat_prompt_ids(engine.tok, messages)
    gen = Decoding(strategy="greedy", max_tokens=n).config(engine.tok)
    with torch.no_grad():
        out = engine.model.generate(input_ids=torch.tensor([ids]), generation_config=gen)[0, len(ids) :]
    out = out.tolist()
    if engine.tok.eos_token_id in out:
        out = out[: out.index(engine.tok.eos_token_id)]
    return engine.tok.decode(out, skip_special_tokens=True)


def test_models_and_health(client, base_url):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    health = httpx.get(f"{base_url}/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny" and health["guardrails"]["enabled"]


def test_chat_greedy_equals_model_generate_with_the_training_template(client, engine):
    messages = [{"role": "user", "content": "Explain the Python function quantiles."}]
    reply = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=8)
    assert reply.choices[0].message.content == greedy_reference(engine, messages, 8)
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens == len(chat_prompt_ids(engine.tok, messages))
    assert 0 < reply.usage.completion_tokens <= 8
    assert reply.model_extra["guardrails"]["hits"] == 0


def test_streaming_matches_the_whole_answer(client):
    messages = [{"role": "user", "content": "Return the sum of the numbers."}]
    whole = client.chat.completions.create(messages=messages, model="tiny", temperature=0, max_tokens=10)
    chunks = list(
        client.chat.completions.create(
            messages=messages, model="tiny", temperature=0, max_tokens=10, stream=True
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].model_extra["guardrails"]["hits"] == 0


def test_seeded_sampling_repeats_and_strategies_run(client):
    messages = [{"role": "user", "content": "Divide data into intervals."}]

    def ask(**kw):
        r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, **kw)
        return r.choices[0].message.content

    assert ask(temperature=1.0, top_p=0.9, seed=7) == ask(temperature=1.0, top_p=0.9, seed=7)
    for extra in (
        {"decoding": "beam", "num_beams": 3},
        {"decoding": "top_k", "top_k": 5},
        {"repetition_penalty": 1.3},
    ):
        assert isinstance(ask(temperature=0.7, seed=1, extra_body=extra), str)


def test_stop_sequence_cuts_the_answer(client, engine):
    messages = [{"role": "user", "content": "Parse a fragment of a document."}]
    full = greedy_reference(engine, messages, 16)
    stop = full[3:5]
    assert stop
    r = client.chat.completions.create(
        model="tiny", messages=messages, temperature=0, max_tokens=16, stop=[stop]
    )
    assert r.choices[0].message.content == full[: full.index(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_text_completion(client, engine):
    r = client.completions.create(model="tiny", prompt="Return the sum", max_tokens=6, temperature=0)
    assert isinstance(r.choices[0].text, str) and r.usage.completion_tokens <= 6
    assert r.usage.prompt_tokens == len(engine.text_ids("Return the sum"))


def test_pii_in_the_prompt_is_masked_and_counted(client, base_url, engine):
    before = (
        httpx.get(f"{base_url}/health").json()["guardrails"]["by_kind"].get("prompt/pii_EMAIL_ADDRESS", 0)
    )
    messages = [{"role": "user", "content": "Mail jane.doe@example.com about it."}]
    r = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=6)
    assert r.model_extra["guardrails"]["prompt_pii"] == {"EMAIL_ADDRESS": 1}
    # the model saw the placeholder, never the address: same answer as for the masked prompt
    masked = [{"role": "user", "content": "Mail <EMAIL_ADDRESS> about it."}]
    assert r.choices[0].message.content == greedy_reference(engine, masked, 6)
    after = httpx.get(f"{base_url}/health").json()["guardrails"]["by_kind"]["prompt/pii_EMAIL_ADDRESS"]
    assert after == before + 1
    metrics = httpx.get(f"{base_url}/metrics").text
    assert 'lmforge_guardrail_hits_total{kind="pii_EMAIL_ADDRESS",where="prompt"}' in metrics


def test_blocked_topic_is_refused_without_generating(client):
    messages = [{"role": "user", "content": f"Tell me about the {BLOCKED.upper()} please"}]
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8)
    assert r.choices[0].message.content == GuardrailsConfig().refusal
    assert r.choices[0].finish_reason == "content_filter" and r.usage.completion_tokens == 0
    assert r.model_extra["guardrails"]["blocked"] == "prompt"
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == GuardrailsConfig().refusal


def test_bad_requests_get_clear_4xx(client, base_url):
    with pytest.raises(openai.BadRequestError, match="max_tokens=999 exceeds this server's limit of 32"):
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=999
        )
    with pytest.raises(openai.BadRequestError, match="messages.0.role"):
        client.chat.completions.create(model="tiny", messages=[{"role": "robot", "content": "x"}])
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])
    r = httpx.post(f"{base_url}/v1/chat/completions", content=b"{" + b" " * 5000 + b"}")
    assert r.status_code == 413 and "4096 bytes" in r.json()["error"]["message"]
    r = httpx.post(
        f"{base_url}/v1/chat/completions", content=b"not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_concurrency_limit_answers_429(engine):
    cfg = ServeConfig(model="unused", max_concurrent_requests=1, max_tokens_limit=64)
    engine.lock.acquire()  # the one slot's generation waits on the model: a second request finds no slot
    try:
        with running(cfg, engine) as url:
            first = threading.Thread(
                target=httpx.post,
                args=(f"{url}/v1/chat/completions",),
                kwargs={
                    "json": {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2},
                    "timeout": 60,
                },
            )
            first.start()
            deadline = time.monotonic() + 20
            while httpx.get(f"{url}/health").json()["requests"]["in_flight"] < 1:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            r = httpx.post(
                f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "y"}]}
            )
            assert r.status_code == 429 and "max_concurrent_requests" in r.json()["error"]["message"]
            engine.lock.release()
            first.join(60)
            released = True
    finally:
        if not locals().get("released"):
            engine.lock.release()


def test_completion_filter_masks_pii_and_stops_across_pieces():
    guard = Guardrails(GuardrailsConfig(blocked_terms=[BLOCKED]))
    text = "Write to alice.smith@example.org today. " + "More words follow here. " * 6 + "END and later"
    hits = Hits()
    filt = guard.completion_filter(["END"], hits)
    shown = "".join(filt.feed(text[i : i + 3]) for i in range(0, len(text), 3)) + filt.finish()
    assert shown == text[: text.index("END")].replace("alice.smith@example.org", "<EMAIL_ADDRESS>")
    assert filt.done == "stop" and hits.completion_pii == {"EMAIL_ADDRESS": 1}
    hits = Hits()
    filt = guard.completion_filter([], hits)
    text = "an answer about the forbidden topic and the rest"
    shown = "".join(filt.feed(ch) for ch in text) + filt.finish()
    assert shown == "an answer about the " and filt.done == "content_filter" and hits.blocked == "completion"


def test_guardrails_off_passes_text_through():
    guard = Guardrails(GuardrailsConfig(enabled=False, blocked_terms=[BLOCKED]))
    hits = Hits()
    assert guard.check_prompt([f"a@example.com {BLOCKED}"], hits) == [f"a@example.com {BLOCKED}"]
    assert hits.total == 0


def test_model_resolves_from_folders_and_the_registry(model_folder, tmp_path, mlflow_uri):
    from mlflow.tracking import MlflowClient

    from tasks.common.tracking import Tracker

    stage = model_folder.parent
    assert resolve_model(str(stage), None, tmp_path)[0] == model_folder.resolve()
    with pytest.raises(FileNotFoundError, match="no model here"):
        resolve_model(str(tmp_path / "nothing"), None, tmp_path)
    tracker = Tracker(mlflow_uri, "serve-test", artifact_location=tmp_path / "mlruns")
    run = tracker.start_pipeline("serve-test", params={}, tags={})
    version = run.register_model(model_folder, "lmforge-serve-test", tags={})
    tracker.end(run)
    MlflowClient(mlflow_uri).set_registered_model_alias(
        "lmforge-serve-test", "champion", str(version.version)
    )
    folder, name = resolve_model("models:/lmforge-serve-test@champion", mlflow_uri, tmp_path / "cache")
    assert json.loads((folder / "config.json").read_text()) == json.loads(
        (model_folder / "config.json").read_text()
    )
    assert name == f"lmforge-serve-test-v{version.version}"
    assert resolve_model("models:/lmforge-serve-test/latest", mlflow_uri, tmp_path / "cache")[1] == name
    with pytest.raises(LookupError, match="not found in the MLflow registry.*passed every quality gate"):
        resolve_model("models:/lmforge-serve-test@nobody", mlflow_uri, tmp_path / "cache")


def test_cli_config_layers(tmp_path):
    import argparse

    from conf.loader import ConfigError
    from tasks.serve.cli import add_arguments, build_config

    p = argparse.ArgumentParser()
    add_arguments(p)
    (tmp_path / "serve.yaml").write_text("max_tokens_limit: 100\nguardrails:\n  blocked_terms: [x]\n")
    args = p.parse_args(
        ["m", "--config", str(tmp_path / "serve.yaml"), "--set", "guardrails.mask_pii=false", "--port", "9"]
    )
    cfg = build_config(args)
    assert (cfg.host, cfg.port, cfg.max_tokens_limit) == ("127.0.0.1", 9, 100)
    assert cfg.guardrails.blocked_terms == ["x"] and not cfg.guardrails.mask_pii
    with pytest.raises(ConfigError, match="max_tokens_limit"):
        build_config(p.parse_args(["m", "--set", "max_tokens_limit=-1"]))


def test_int8_variant_serves_torchao_weights(model_folder):
    model, tok = load_model(model_folder, "int8")
    assert type(model.model.layers[0].mlp.up_proj.weight).__name__ == "Int8Tensor"
    engine = Engine(model, tok, "tiny-int8", threads=1)
    with single_thread(), running(ServeConfig(model="unused"), engine) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        r = client.chat.completions.create(
            model="tiny-int8", messages=[{"role": "user", "content": "hi"}], temperature=0, max_tokens=4
        )
    assert r.model == "tiny-int8" and r.usage.completion_tokens >= 1


def test_beam_answer_equals_the_evaluation_tables_beam(client, engine):
    """`decoding: beam` is the evaluate stage's beam strategy: same GenerationConfig, same answer."""
    import torch

    from tasks.evaluate.lm import decoding_config

    messages = [{"role": "user", "content": "A class for producing HTML side by side."}]
    ids = chat_prompt_ids(engine.tok, messages)
    gen = decoding_config("beam", engine.tok, 8, num_beams=3)
    with torch.no_grad():
        out = engine.model.generate(input_ids=torch.tensor([ids]), generation_config=gen)[
            0, len(ids) :
        ].tolist()
    if engine.tok.eos_token_id in out:
        out = out[: out.index(engine.tok.eos_token_id)]
    r = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=8, extra_body={"decoding": "beam", "num_beams": 3}
    )
    assert r.choices[0].message.content == engine.tok.decode(out, skip_special_tokens=True)


def test_a_client_that_leaves_mid_stream_frees_its_slot(base_url):
    body = {"messages": [{"role": "user", "content": "Run the command."}], "max_tokens": 32, "stream": True}
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        first = next(r.iter_lines())
        assert first.startswith("data: ") and json.loads(first[6:])["object"] == "chat.completion.chunk"
    deadline = time.monotonic() + 20
    while httpx.get(f"{base_url}/health").json()["requests"]["in_flight"] != 0:
        assert time.monotonic() < deadline, "the stream's slot was never freed"
        time.sleep(0.05)


def test_streamed_text_completion(client):
    chunks = list(
        client.completions.create(model="tiny", prompt="Return the", max_tokens=5, temperature=0, stream=True)
    )
    whole = client.completions.create(model="tiny", prompt="Return the", max_tokens=5, temperature=0)
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
