"""Guardrails of the serving path: PII masking (the project's scrubber) and a blocklist/topic filter.

The prompt is checked before the model sees it: PII is replaced by `<TYPE>` placeholders (the model
never receives the raw values) and a blocked topic turns the request into a refusal without running
the model. The completion goes through `CompletionFilter`, the same object for streamed and whole
answers: stop sequences cut it, PII is masked, a blocked topic ends it. Streaming holds back the last
few characters, because a stop sequence, an e-mail address or a phone number may still be arriving.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from conf.scrub import ScrubConfig
from conf.serve import GuardrailsConfig
from tasks.common.pii import Scrubber, Span, redact

# How far back PII may still change while text streams in: no detected entity (e-mail, phone, card,
# IBAN, IP) is longer, so text this far before the end is final.
PII_HOLDBACK = 96


@dataclass
class Hits:
    """What the guardrails found in one request: PII by entity type, and where a topic was refused."""

    prompt_pii: Counter[str] = field(default_factory=Counter)
    completion_pii: Counter[str] = field(default_factory=Counter)
    blocked: str | None = None  # "prompt" or "completion"
    blocked_rule: str | None = None

    @property
    def total(self) -> int:
        return sum(self.prompt_pii.values()) + sum(self.completion_pii.values()) + bool(self.blocked)

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt_pii": dict(self.prompt_pii),
            "completion_pii": dict(self.completion_pii),
            "blocked": self.blocked,
            "blocked_rule": self.blocked_rule,
            "hits": self.total,
        }


class Guardrails:
    """Built once per server from its config; `check_prompt` and `completion_filter` per request."""

    def __init__(self, cfg: GuardrailsConfig):
        self.cfg = cfg
        self.enabled = cfg.enabled
        self.scrubber = (
            Scrubber.from_config(ScrubConfig(entities=list(cfg.pii_entities)))
            if cfg.enabled and cfg.mask_pii
            else None
        )
        rules = [(t, r"(?<!\w)" + re.escape(t.strip()) + r"(?!\w)") for t in cfg.blocked_terms]
        rules += [(p, p) for p in cfg.blocked_patterns]
        self.rules = [(name, re.compile(p, re.IGNORECASE)) for name, p in rules] if cfg.enabled else []

    @property
    def refusal(self) -> str:
        return self.cfg.refusal

    def mask(self, text: str, counts: Counter[str]) -> str:
        """`text` with PII replaced by `<TYPE>`; each span counted in `counts`."""
        if self.scrubber is None:
            return text
        masked, spans = self.scrubber.scrub(text)
        counts.update(sp.type for sp in spans)
        return masked

    def blocked(self, text: str) -> tuple[str, re.Match[str]] | None:
        """The first blocklist rule that matches `text` (earliest match), or None."""
        found = [(name, m) for name, rule in self.rules if (m := rule.search(text))]
        return min(found, key=lambda f: f[1].start()) if found else None

    def check_prompt(self, texts: list[str], hits: Hits) -> list[str] | None:
        """The prompt texts with PII masked, or None when a blocked topic means refusing the request."""
        masked = [self.mask(t, hits.prompt_pii) for t in texts]
        found = self.blocked("\n".join(masked))
        if found:
            hits.blocked, hits.blocked_rule = "prompt", found[0]
            return None
        return masked

    def completion_filter(self, stop: list[str], hits: Hits) -> CompletionFilter:
        return CompletionFilter(self, stop, hits)


class CompletionFilter:
    """Turns the model's raw text, piece by piece, into what the client may see.

    `feed(piece)` returns the text that is final so far (possibly ""), `finish()` the rest. After a
    stop sequence or a blocked topic, `done` says why ("stop" or "content_filter") and the generation
    can be cancelled: nothing after that point is ever shown.

    Work per piece stays small: PII is searched only from a little before the settled point (the raw
    offset shown so far) on, since text before it can no longer change.
    """

    def __init__(self, guard: Guardrails, stop: list[str], hits: Hits):
        self.guard = guard
        self.stop = [s for s in stop if s]
        self.hits = hits
        self.raw = ""
        self.settled = 0  # raw text before this offset has been shown (redacted)
        self.shown = ""
        self.done: str | None = None
        longest_stop = max((len(s) for s in self.stop), default=1) - 1
        self.holdback = max(longest_stop, PII_HOLDBACK if guard.scrubber is not None else 0)

    def feed(self, piece: str) -> str:
        if self.done:
            return ""
        searched = max(0, len(self.raw) - max((len(s) for s in self.stop), default=0))
        self.raw += piece
        cut = min((i for s in self.stop if (i := self.raw.find(s, searched)) >= 0), default=-1)
        if cut >= 0:
            self.raw = self.raw[:cut]
            self.done = "stop"
            return self._release(len(self.raw))
        return self._release(len(self.raw) - self.holdback)

    def finish(self) -> str:
        if self.done == "content_filter":  # everything from the blocked topic on stays unseen
            return ""
        return self._release(len(self.raw))

    def _release(self, upto: int) -> str:
        """The newly final text up to raw offset `upto` (moved back to the start of a PII span it cuts)."""
        if upto <= self.settled:
            return ""
        spans = self._new_spans()
        cut = upto
        for sp in spans:
            if sp.start < cut < sp.end:
                cut = sp.start
        applied = [
            Span(sp.type, sp.start - self.settled, sp.end - self.settled) for sp in spans if sp.end <= cut
        ]
        piece = redact(self.raw[self.settled : cut], applied)
        self.settled = cut
        self.hits.completion_pii.update(sp.type for sp in applied)
        found = self.guard.blocked(self.shown + piece)
        if found:
            self.hits.blocked, self.hits.blocked_rule = "completion", found[0]
            self.done = "content_filter"
            piece = piece[: max(found[1].start() - len(self.shown), 0)]
        self.shown += piece
        return piece

    def _new_spans(self) -> list[Span]:
        """PII spans that start at or after the settled point, offsets into `raw`."""
        if self.guard.scrubber is None:
            return []
        start = max(0, self.settled - PII_HOLDBACK)  # context: a span's start may need what precedes it
        found = self.guard.scrubber.find(self.raw[start:])
        return [
            Span(sp.type, sp.start + start, sp.end + start)
            for sp in found
            if sp.start + start >= self.settled
        ]
