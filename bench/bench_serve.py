"""Serve bench: what the HTTP server adds on top of plain `model.generate`.

For the full-precision and the int8 model, measures

    (a) generate   plain `model.generate` in this process, one request after another, with the same
                   prompt ids (training chat template) and GenerationConfig the server builds
    (b) server     `lmforge serve` in its own process (uvicorn, guardrails on), driven over loopback by
                   1, 4 and 16 concurrent clients (httpx threads), non-streamed chat completions

Both run greedy decoding with the same torch thread count (`--threads`), on the same prompts, and report
completion tokens/s and p50/p95 request latency. (a) and the server at concurrency 1 alternate, repeat
after repeat, so machine noise hits both; the overhead row is server c=1 tokens/s against (a).
Target: overhead <= 10% at concurrency 1. The server runs one generation at a time (its model lock), so
higher concurrency shows queueing in the latency, not more throughput.

The model is a randomly initialised Llama sized by --hidden/--layers (a real export folder with --model):
speed does not depend on what the weights learned. Default: ~3-5 minutes on 2 cores.

    python -m bench.bench_serve [--model FOLDER] [--requests 16] [--max-tokens 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench.common import save

PROMPTS = [
    "Explain the Python function quantiles in module statistics.",
    "Return the sum of the numbers in the list.",
    "Divide data into n continuous intervals with equal probability.",
    "Parse a fragment of a document, given the context from which it was extracted.",
    "Run the command line interface.",
    "A class for producing HTML side by side comparison with change highlights.",
]
CONCURRENCY = (1, 4, 16)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def figures(tokens: int, wall: float, latencies: list[float]) -> dict[str, float]:
    return {
        "tokens_per_s": tokens / wall,
        "p50_s": statistics.median(latencies),
        "p95_s": percentile(latencies, 0.95),
        "tokens": tokens,
    }


# --- (a) plain generate -----------------------------------------------------------------------------


def generate_baseline(folder: Path, variant: str, n: int, max_tokens: int, threads: int) -> Any:
    """A function running `n` requests through plain `model.generate`; returns their figures."""
    import torch

    from tasks.common.generation import chat_prompt_ids
    from tasks.serve.engine import Decoding, load_model

    torch.set_num_threads(threads)
    model, tok = load_model(folder, variant)
    gen = Decoding(strategy="greedy", max_tokens=max_tokens).config(tok)
    prompts = [chat_prompt_ids(tok, [{"role": "user", "content": p}]) for p in PROMPTS]

    def run() -> dict[str, float]:
        latencies, tokens = [], 0
        start = time.perf_counter()
        for i in range(n):
            ids = torch.tensor([prompts[i % len(prompts)]])
            t0 = time.perf_counter()
            with torch.no_grad():
                out = model.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gen
                )
            latencies.append(time.perf_counter() - t0)
            new = out[0, ids.shape[1] :].tolist()
            tokens += new.index(tok.eos_token_id) + 1 if tok.eos_token_id in new else len(new)
        return figures(tokens, time.perf_counter() - start, latencies)

    run()  # warm-up
    return run


# --- (b) the server ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server(folder: Path, variant: str, threads: int, max_tokens: int) -> Iterator[str]:
    port = free_port()
    cmd = [
        sys.executable, "-m", "flows.cli", "serve", str(folder), "--port", str(port), "--variant", variant,
        "--set", f"threads={threads}", "--set", "max_concurrent_requests=64",
        "--set", f"max_tokens_limit={max(max_tokens, 64)}",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {proc.stderr.read() if proc.stderr else ''}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def drive(url: str, n: int, concurrency: int, max_tokens: int) -> dict[str, float]:
    """`n` greedy chat completions from `concurrency` client threads; their figures."""
    client = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=concurrency))

    def one(i: int) -> tuple[float, int]:
        body = {
            "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            "max_tokens": max_tokens,
            "temperature": 0,
        }
        t0 = time.perf_counter()
        r = client.post(f"{url}/v1/chat/completions", json=body)
        r.raise_for_status()
        return time.perf_counter() - t0, int(r.json()["usage"]["completion_tokens"])

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        done = list(pool.map(one, range(n)))
    wall = time.perf_counter() - start
    client.close()
    return figures(sum(t for _, t in done), wall, [lat for lat, _ in done])


# --- the bench --------------------------------------------------------------------------------------


def bench_variant(folder: Path, variant: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    baseline = generate_baseline(folder, variant, args.requests, args.max_tokens, args.threads)
    rows: list[dict[str, Any]] = []
    with server(folder, variant, args.threads, args.max_tokens) as url:
        drive(url, 4, 1, args.max_tokens)  # warm-up
        plain, served = [], []
        for _ in range(args.repeats):  # interleaved: (a) and the server at c=1 see the same noise
            plain.append(baseline())
            served.append(drive(url, args.requests, 1, args.max_tokens))
        best_plain = max(plain, key=lambda f: f["tokens_per_s"])
        best_served = max(served, key=lambda f: f["tokens_per_s"])
        rows.append(row(variant, "generate (in process)", 1, best_plain))
        rows.append(row(variant, "server", 1, best_served))
        for c in CONCURRENCY[1:]:
            rows.append(row(variant, "server", c, drive(url, max(args.requests, 2 * c), c, args.max_tokens)))
    overhead = 1 - best_served["tokens_per_s"] / best_plain["tokens_per_s"]
    rows.append(
        {
            "bench": f"serve/{variant}/overhead_c1",
            "variant": variant,
            "path": "server vs generate, c=1",
            "concurrency": 1,
            "overhead": round(overhead, 4),
            "target": "<= 0.10",
            "ok": overhead <= 0.10,
        }
    )
    return rows


def row(variant: str, path: str, concurrency: int, f: dict[str, float]) -> dict[str, Any]:
    return {
        "bench": f"serve/{variant}/{'generate' if path.startswith('generate') else 'server'}/c{concurrency}",
        "variant": variant,
        "path": path,
        "concurrency": concurrency,
        "tokens_per_s": round(f["tokens_per_s"], 1),
        "p50_s": round(f["p50_s"], 4),
        "p95_s": round(f["p95_s"], 4),
        "tokens": int(f["tokens"]),
    }


def main() -> Path:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="a model folder (default: a random Llama of --hidden/--layers)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--requests", type=int, default=16, help="requests per measurement")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default="full,int8")
    args = parser.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        if args.model:
            folder = Path(args.model)
        else:
            from tasks.common.testing import tiny_lm_folder

            folder = tiny_lm_folder(Path(tmp) / "model", hidden=args.hidden, layers=args.layers)
        rows = [r for v in args.variants.split(",") for r in bench_variant(folder, v.strip(), args)]
    return save("serve", rows, {"args": vars(args)})


if __name__ == "__main__":
    main()
