"""The OpenAI-compatible HTTP API (FastAPI): chat and text completions, models, health, metrics, and
the playground page at `/`.

Endpoints follow OpenAI's shapes, so the official clients work unchanged; errors carry OpenAI's
`{"error": {"message", "type", "param", "code"}}` body. lmforge's extensions: request fields
`decoding` (a strategy of the evaluation table), `top_k`, `num_beams`, `repetition_penalty`, and a
`guardrails` object in every response (and in the last streamed chunk) counting what was masked or
refused. Handlers are plain functions: FastAPI runs them on its thread pool, and the engine's lock
serialises the model.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conf.serve import ServeConfig
from tasks.serve.engine import STRATEGIES, Decoding, Engine, Output
from tasks.serve.guardrails import Guardrails, Hits
from tasks.serve.metrics import ServerMetrics

STATIC = Path(__file__).parent / "static"


# --- errors ----------------------------------------------------------------------------------------


class APIError(Exception):
    """An error answered in OpenAI's shape with `status`."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> JSONResponse:
        kind = {
            400: "invalid_request_error",
            404: "not_found_error",
            413: "invalid_request_error",
            429: "rate_limit_error",
        }
        body = {
            "error": {
                "message": self.message,
                "type": kind.get(self.status, "server_error"),
                "param": self.param,
                "code": self.code,
            }
        }
        return JSONResponse(body, status_code=self.status)


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is answered 413 before any handler reads it
    (by its Content-Length, or while it streams in when the length is not announced)."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = APIError(
            413, f"request body exceeds the server's limit of {self.limit} bytes", code="body_too_large"
        )
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await too_big.response()(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise too_big
            return message

        try:
            await self.app(scope, limited, send)
        except APIError as e:
            await e.response()(scope, receive, send)


# --- requests --------------------------------------------------------------------------------------


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str


class Sampling(BaseModel):
    """Decoding fields shared by both completion endpoints (OpenAI's names, plus lmforge's)."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    max_tokens: int | None = Field(None, gt=0)
    max_completion_tokens: int | None = Field(None, gt=0)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    num_beams: int | None = Field(None, ge=1)
    repetition_penalty: float | None = Field(None, gt=0)
    decoding: Literal["greedy", "temperature", "top_k", "top_p", "beam", "sample"] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    n: int = 1
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0

    @model_validator(mode="after")
    def _supported(self) -> Sampling:
        if self.n != 1:
            raise ValueError("n: only n=1 is supported")
        if self.frequency_penalty or self.presence_penalty:
            raise ValueError(
                "frequency_penalty/presence_penalty are not supported; use repetition_penalty (e.g. 1.2)"
            )
        return self

    def strategy(self) -> str:
        """The evaluation table's strategy these fields ask for: `decoding` when given; otherwise beam
        for num_beams > 1, greedy for temperature 0, else sampling with the given knobs."""
        if self.decoding:
            return self.decoding
        if (self.num_beams or 1) > 1:
            return "beam"
        if self.temperature == 0:
            return "greedy"
        return "sample"

    def to_decoding(self, cfg: ServeConfig) -> Decoding:
        max_tokens = self.max_completion_tokens or self.max_tokens or cfg.default_max_tokens
        if max_tokens > cfg.max_tokens_limit:
            raise APIError(
                400,
                f"max_tokens={max_tokens} exceeds this server's limit of {cfg.max_tokens_limit}",
                param="max_tokens",
                code="max_tokens_too_large",
            )
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stop) > cfg.max_stop_sequences:
            raise APIError(400, f"at most {cfg.max_stop_sequences} stop sequences", param="stop")
        beams = self.num_beams or 4
        if beams > cfg.max_beams:
            raise APIError(
                400, f"num_beams={beams} exceeds this server's limit of {cfg.max_beams}", "num_beams"
            )
        strategy = self.strategy()
        assert strategy in STRATEGIES
        return Decoding(
            strategy=strategy,
            max_tokens=max_tokens,
            temperature=self.temperature if self.temperature else 1.0,
            top_k=self.top_k if self.top_k is not None else (20 if strategy == "top_k" else 0),
            top_p=self.top_p if self.top_p is not None else (0.9 if strategy == "top_p" else 1.0),
            num_beams=beams,
            repetition_penalty=self.repetition_penalty or 1.0,
            stop=stop,
            seed=self.seed,
        )


class ChatRequest(Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1)


class CompletionRequest(Sampling):
    prompt: str | list[str]

    def text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise APIError(400, "prompt: send one prompt per request (a string or a list of one)", "prompt")
        return self.prompt[0]


# --- the app ---------------------------------------------------------------------------------------


class Server:
    """What the handlers share: config, engine, guardrails, metrics, and the in-flight count."""

    def __init__(self, cfg: ServeConfig, engine: Engine):
        self.cfg = cfg
        self.engine = engine
        self.guard = Guardrails(cfg.guardrails)
        self.metrics = ServerMetrics()
        self._slots = threading.BoundedSemaphore(cfg.max_concurrent_requests)

    def admit(self) -> None:
        """Take a request slot, or refuse with 429 when `max_concurrent_requests` are in flight."""
        if not self._slots.acquire(blocking=False):
            self.metrics.rejected.labels(reason="busy").inc()
            raise APIError(
                429,
                f"server busy: {self.cfg.max_concurrent_requests} requests in flight "
                "(max_concurrent_requests); retry shortly",
                code="too_many_requests",
            )
        self.metrics.in_flight.inc()

    def release(self) -> None:
        self.metrics.in_flight.dec()
        self._slots.release()

    def check_model(self, name: str | None) -> None:
        if name and name != self.engine.model_id:
            raise APIError(
                404,
                f"model {name!r} not served here; this server serves {self.engine.model_id!r}",
                "model",
                "model_not_found",
            )

    def prompt_ids(self, ids: list[int]) -> list[int]:
        if len(ids) > self.cfg.max_prompt_tokens:
            raise APIError(
                400,
                f"prompt has {len(ids)} tokens; this server accepts at most {self.cfg.max_prompt_tokens}",
                "messages",
                "context_length_exceeded",
            )
        return ids

    def run(
        self, ids: list[int] | None, dec: Decoding, hits: Hits, stream: bool
    ) -> Iterator[tuple[str, Any]]:
        """Events of one generation: ("delta", text) pieces, then ("done", (finish_reason, tokens)); a
        refused prompt (ids None) answers the refusal. Counts tokens, latency and guardrail hits.

        Takes a request slot (429 when none is free) and primes itself, so the slot is freed however the
        events end: consumed, closed by a client that left, or dropped unstarted.
        """
        self.admit()
        events = self._events(ids, dec, hits, stream)
        next(events)  # enters the try below
        return events

    def _events(
        self, ids: list[int] | None, dec: Decoding, hits: Hits, stream: bool
    ) -> Iterator[tuple[str, Any]]:
        start = time.perf_counter()
        out = Output()
        finish = "content_filter"
        try:
            yield "start", None
            if ids is None:
                yield "delta", self.guard.refusal
            else:
                filt = self.guard.completion_filter(dec.stop, hits)
                cancel = threading.Event()
                pieces = self.engine.stream(ids, dec, cancel, out, incremental=stream)
                try:
                    for piece in pieces:
                        text = filt.feed(piece)
                        if text:
                            yield "delta", text
                        if filt.done:
                            cancel.set()
                    rest = filt.finish()
                    if rest:
                        yield "delta", rest
                finally:
                    pieces.close()
                finish = filt.done or ("stop" if out.eos else "length")
            yield "done", (finish, out.tokens)
        finally:
            self.metrics.observe(hits, out.tokens, time.perf_counter() - start, finish)
            self.release()


def create_app(cfg: ServeConfig, engine: Engine) -> FastAPI:
    """The FastAPI app serving `engine` under `cfg`'s limits and guardrails."""
    app = FastAPI(title="lmforge", version="1", docs_url="/docs", redoc_url=None)
    server = Server(cfg, engine)
    app.state.server = server

    @app.exception_handler(APIError)
    def _api_error(request: Request, exc: APIError) -> JSONResponse:
        server.metrics.errors.labels(status=str(exc.status)).inc()
        return exc.response()

    @app.exception_handler(RequestValidationError)
    def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
            for e in exc.errors()
        )
        server.metrics.errors.labels(status="400").inc()
        return APIError(400, message or "invalid request", where or None, "invalid_request").response()

    @app.get("/", include_in_schema=False)
    def playground() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": engine.model_id,
            "guardrails": {"enabled": cfg.guardrails.enabled, **server.metrics.guardrail_counts()},
            "requests": server.metrics.request_counts(),
            "limits": {
                "max_tokens": cfg.max_tokens_limit,
                "max_prompt_tokens": cfg.max_prompt_tokens,
                "max_body_bytes": cfg.max_body_bytes,
                "max_concurrent_requests": cfg.max_concurrent_requests,
            },
        }

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        body, content_type = server.metrics.exposition()
        return Response(body, media_type=content_type)

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(engine.model_id)]}

    @app.get("/v1/models/{name}")
    def model(name: str) -> dict[str, Any]:
        server.check_model(name)
        return model_card(name)

    @app.post("/v1/chat/completions", response_model=None)
    def chat(req: ChatRequest) -> JSONResponse | StreamingResponse:
        server.check_model(req.model)
        dec = req.to_decoding(cfg)
        hits = Hits()
        masked = server.guard.check_prompt([m.content for m in req.messages], hits)
        messages = [{"role": m.role, "content": c} for m, c in zip(req.messages, masked or [], strict=False)]
        ids = server.prompt_ids(engine.chat_ids(messages)) if masked is not None else None
        events = server.run(ids, dec, hits, req.stream)
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "created": int(time.time()),
            "model": engine.model_id,
        }
        if req.stream:
            return StreamingResponse(chat_chunks(events, base, hits), media_type="text/event-stream")
        text, finish, tokens = collect(events)
        return JSONResponse(
            {
                **base,
                "object": "chat.completion",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
                ],
                "usage": usage(len(ids or []), tokens),
                "guardrails": hits.to_json(),
            }
        )

    @app.post("/v1/completions", response_model=None)
    def completions(req: CompletionRequest) -> JSONResponse | StreamingResponse:
        server.check_model(req.model)
        dec = req.to_decoding(cfg)
        hits = Hits()
        masked = server.guard.check_prompt([req.text()], hits)
        ids = server.prompt_ids(engine.text_ids(masked[0])) if masked is not None else None
        events = server.run(ids, dec, hits, req.stream)
        base = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": engine.model_id}
        if req.stream:
            return StreamingResponse(text_chunks(events, base, hits), media_type="text/event-stream")
        text, finish, tokens = collect(events)
        return JSONResponse(
            {
                **base,
                "object": "text_completion",
                "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
                "usage": usage(len(ids or []), tokens),
                "guardrails": hits.to_json(),
            }
        )

    return BodyLimit(app, cfg.max_body_bytes)  # type: ignore[return-value]


# --- responses -------------------------------------------------------------------------------------


def model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "lmforge"}


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def collect(events: Iterator[tuple[str, Any]]) -> tuple[str, str, int]:
    """(whole answer, finish_reason, completion tokens) of a non-streamed request."""
    parts, finish, tokens = [], "stop", 0
    for kind, value in events:
        if kind == "delta":
            parts.append(value)
        elif kind == "done":
            finish, tokens = value
    return "".join(parts), finish, tokens


def sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def chat_chunks(events: Iterator[tuple[str, Any]], base: dict[str, Any], hits: Hits) -> Iterator[str]:
    """Server-sent `chat.completion.chunk` events: the role, the text pieces, the finish reason with
    the guardrail counts, then `[DONE]`."""
    head = {**base, "object": "chat.completion.chunk"}
    try:
        yield sse({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        for kind, value in events:
            if kind == "delta":
                yield sse(
                    {**head, "choices": [{"index": 0, "delta": {"content": value}, "finish_reason": None}]}
                )
            elif kind == "done":
                last = {"index": 0, "delta": {}, "finish_reason": value[0]}
                yield sse({**head, "choices": [last], "guardrails": hits.to_json()})
        yield sse("[DONE]")
    finally:
        events.close()  # type: ignore[attr-defined]


def text_chunks(events: Iterator[tuple[str, Any]], base: dict[str, Any], hits: Hits) -> Iterator[str]:
    head = {**base, "object": "text_completion"}
    try:
        for kind, value in events:
            text, finish = (value, None) if kind == "delta" else ("", value[0])
            chunk = {
                **head,
                "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
            }
            yield sse({**chunk, "guardrails": hits.to_json()} if finish else chunk)
        yield sse("[DONE]")
    finally:
        events.close()  # type: ignore[attr-defined]
