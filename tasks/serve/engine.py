"""The model behind the server: where it comes from, and how one request is decoded.

A model is named by a folder (a model folder, or a stage folder holding `model/`, such as
`artifacts/export/<hash12>`) or by an MLflow registry URI (`models:/lmforge-tiny@champion`,
`models:/lmforge-tiny/3`), downloaded once into a local cache. Prompts are rendered exactly as in
training and evaluation (`tasks.common.generation.chat_prompt_ids`), and decoding settings become one
explicit `GenerationConfig` (`tasks.common.generation.generation_config`), so a served answer equals
the evaluate stage's answer for the same prompt and strategy.

One generation runs at a time (a lock): a CPU model already uses every core for one request, and a
seeded request must own the global RNG while it samples.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tasks.common.generation import chat_prompt_ids, generation_config
from tasks.common.models import load_causal_lm, load_tokenizer

log = logging.getLogger(__name__)
MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))$")
STRATEGIES = ("greedy", "temperature", "top_k", "top_p", "beam", "sample")


# --- where the model comes from --------------------------------------------------------------------


def resolve_model(source: str, tracking_uri: str | None, cache: Path) -> tuple[Path, str]:
    """(local model folder, a name for it): a folder as given, or a registry version downloaded."""
    if source.startswith("models:/"):
        return download_registered(source, tracking_uri, cache)
    path = Path(source).expanduser()
    for folder in (path, path / "model"):
        if (folder / "config.json").is_file():
            return folder.resolve(), path.resolve().name
    raise FileNotFoundError(
        f"{source}: no model here (expected config.json in it or in its model/ folder, e.g. "
        "artifacts/export/<hash12>), and it is no registry URI such as models:/lmforge-tiny@champion"
    )


def download_registered(uri: str, tracking_uri: str | None, cache: Path) -> tuple[Path, str]:
    """The files of a registered model version (by alias or number), downloaded under `cache`."""
    import mlflow
    from mlflow.tracking import MlflowClient

    m = MODELS_URI.match(uri)
    if not m:
        raise ValueError(f"{uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    name = m["name"]
    try:
        if m["alias"]:
            version = client.get_model_version_by_alias(name, m["alias"])
        elif m["version"] == "latest":
            version = max(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))
        else:
            version = client.get_model_version(name, m["version"])
    except Exception as e:  # MlflowException (unknown name/alias) or an empty search
        hint = (
            f"; the export stage sets @{m['alias']} only on a version that passed every quality gate: "
            f"serve a version instead (models:/{name}/latest) or an export folder"
            if m["alias"]
            else ""
        )
        raise LookupError(f"{uri}: not found in the MLflow registry at {tracking_uri}: {e}{hint}") from e
    dst = cache / name / str(version.version)
    if not (dst / "config.json").is_file():
        dst.mkdir(parents=True, exist_ok=True)
        source = client.get_model_version_download_uri(name, version.version)
        mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst), tracking_uri=tracking_uri)
        nested = [p.parent for p in dst.rglob("config.json")]
        if not nested:
            raise FileNotFoundError(f"{uri}: version {version.version} ({source}) holds no config.json")
        if nested[0] != dst:
            return nested[0], f"{name}-v{version.version}"
    return dst, f"{name}-v{version.version}"


def load_model(folder: Path, variant: str = "full") -> tuple[Any, Any]:
    """(model in eval mode, tokenizer with chat template). `int8`: the export stage's verified `int8/`
    beside `folder` when there is one, else the same torchao int8 weight-only quantization applied at
    load time."""
    tok = load_tokenizer(folder)
    if variant != "int8":
        return load_causal_lm(folder).eval(), tok
    from tasks.export.quantized import quiet_torchao

    quiet_torchao()
    exported = folder.parent / "int8"
    if (exported / "config.json").is_file():
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(str(exported), local_files_only=True).eval(), tok
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    model = load_causal_lm(folder).eval()
    quantize_(model, Int8WeightOnlyConfig())
    return model, tok


# --- decoding --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decoding:
    """One request's decoding settings, as the evaluation table names them."""

    strategy: str = "greedy"
    max_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    num_beams: int = 4
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None

    def config(self, tok: Any) -> Any:
        """The explicit GenerationConfig (nothing inherited from the model folder's defaults)."""
        sample = {
            "do_sample": True,
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
        }
        knobs: dict[str, Any] = {
            "greedy": {},
            "beam": {"num_beams": self.num_beams, "early_stopping": True},
            "temperature": {**sample, "top_k": 0, "top_p": 1.0},
            "top_k": {**sample, "top_p": 1.0},
            "top_p": {**sample, "top_k": 0},
            "sample": sample,
        }[self.strategy]
        knobs.setdefault("num_beams", 1)
        if self.stop:
            knobs["stop_strings"] = list(self.stop)
        return generation_config(
            tok.eos_token_id,
            tok.pad_token_id,
            self.max_tokens,
            repetition_penalty=self.repetition_penalty,
            bos_token_id=tok.bos_token_id,
            **knobs,
        )


class Cancelled:
    """A stopping criterion that ends generation once `event` is set (client gone, stop sequence seen)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        return torch.full(
            (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device
        )


@dataclass
class Output:
    """What generation produced: decoded pieces as they come, then the token count and why it ended."""

    tokens: int = 0
    eos: bool = False


class Engine:
    """A loaded model and tokenizer; `stream` yields decoded text pieces of one answer."""

    def __init__(self, model: Any, tokenizer: Any, model_id: str, threads: int | None = None):
        self.model = model
        self.tok = tokenizer
        self.model_id = model_id
        self.lock = threading.Lock()
        self.threads = threads
        self.context = int(getattr(model.config, "max_position_embeddings", 0) or 0)

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """The prompt as training rendered it: the chat template up to the opened assistant turn."""
        return chat_prompt_ids(self.tok, messages)

    def text_ids(self, prompt: str) -> list[int]:
        """A raw-text prompt (/v1/completions), preceded by EOS as documents are in the token shards."""
        return [self.tok.eos_token_id, *self.tok(prompt, add_special_tokens=False)["input_ids"]]

    def stream(
        self, ids: list[int], dec: Decoding, cancel: threading.Event, out: Output, incremental: bool = True
    ) -> Iterator[str]:
        """Decoded pieces of the answer to `ids`; `out` gets the token count and whether EOS ended it.

        `incremental=False` (a client that waits for the whole answer) and beam search (which keeps
        several candidates until the end) yield the finished answer at once, without a streamer thread.
        """
        from transformers import StoppingCriteriaList

        gen = dec.config(self.tok)
        input_ids = torch.tensor([ids], dtype=torch.long)
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "generation_config": gen,
            "stopping_criteria": StoppingCriteriaList([Cancelled(cancel)]),
            "tokenizer": self.tok,  # stop_strings need it
        }
        with self.lock:
            before = torch.get_num_threads()
            if self.threads:
                torch.set_num_threads(self.threads)
            try:
                if dec.seed is not None:
                    torch.manual_seed(dec.seed)
                if gen.num_beams > 1 or not incremental:
                    yield from self._whole(kwargs, len(ids), out)
                else:
                    yield from self._streamed(kwargs, out)
            finally:
                torch.set_num_threads(before)

    def _whole(self, kwargs: dict[str, Any], n_prompt: int, out: Output) -> Iterator[str]:
        with torch.no_grad():
            new = self.model.generate(**kwargs)[0, n_prompt:].tolist()
        eos = self.tok.eos_token_id
        if eos in new:
            new, out.eos = new[: new.index(eos)], True
        new = [t for t in new if t != self.tok.pad_token_id]
        out.tokens = len(new) + out.eos
        yield self.tok.decode(new, skip_special_tokens=True)

    def _streamed(self, kwargs: dict[str, Any], out: Output) -> Iterator[str]:
        from transformers import TextIteratorStreamer

        tok = self.tok

        class Counting(TextIteratorStreamer):
            def put(self, value: torch.Tensor) -> None:
                if not (self.skip_prompt and self.next_tokens_are_prompt):
                    ids = value.reshape(-1).tolist()
                    out.tokens += len(ids)
                    out.eos = out.eos or tok.eos_token_id in ids
                super().put(value)

        streamer = Counting(tok, skip_prompt=True, skip_special_tokens=True)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with torch.no_grad():
                    self.model.generate(**kwargs, streamer=streamer)
            except BaseException as e:  # re-raised in the request's thread below
                errors.append(e)
                streamer.end()

        worker = threading.Thread(target=run, name="generate", daemon=True)
        worker.start()
        try:
            yield from streamer
        finally:
            kwargs["stopping_criteria"][0].event.set()
            worker.join()
        if errors:
            raise errors[0]
