"""The scrubber: every detector over a text, overlaps resolved, spans replaced with `<TYPE>`.

Speed: patterns starting with a lookbehind defeat `re`'s fast scan, so the text is scanned once for
runs of >= 7 digits/separators (and for `@`, `::`), and the number patterns only run in small
windows around those runs (an IBAN's BBAN always has such a run).

Overlaps resolve deterministically: longest span first, then entity priority (`ENTITY_TYPES` order),
then leftmost. Phones, the least specific type, are only looked for outside the spans the other
detectors claimed and outside decimal numbers (which also keeps IP lists and number tables away from
the phone checks). Offsets are Python string indices (code points) into the original text.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from conf.scrub import ENTITY_TYPES, MAJOR_PHONE_REGIONS, ScrubConfig
from tasks.common.pii import entities
from tasks.common.pii.guards import merge_spans
from tasks.common.pii.phones import PhoneFinder

PRIORITY = {t: i for i, t in enumerate(ENTITY_TYPES)}
_DASHES = "\u2010-\u2015\u2212\u00a0"
_DECIMAL_TOKEN = re.compile(r"(?<![\d.,])[+-]?\d+\.\d+(?![\d.])")


@dataclass(frozen=True, slots=True)
class Span:
    type: str
    start: int
    end: int

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "start": self.start, "end": self.end}


def placeholder(entity: str) -> str:
    return f"<{entity}>"


def resolve(cands: Iterable[Span]) -> list[Span]:
    """Non-overlapping spans: longest first, then entity priority, then leftmost; sorted by start."""
    starts: list[int] = []  # the taken spans, kept sorted (they never overlap, so neighbours suffice)
    taken: list[Span] = []
    for c in sorted(set(cands), key=lambda c: (c.start - c.end, PRIORITY[c.type], c.start)):
        i = bisect.bisect_right(starts, c.start)
        if (i and taken[i - 1].end > c.start) or (i < len(taken) and taken[i].start < c.end):
            continue
        starts.insert(i, c.start)
        taken.insert(i, c)
    return taken


def _cut(span: tuple[int, int], blocked: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """The parts of `span` outside the (sorted) `blocked` intervals."""
    s, e = span
    for bs, be in blocked[max(0, bisect.bisect_left(blocked, (s, -1)) - 1) :]:
        if bs >= e:
            break
        if be > s:
            if bs > s:
                yield s, bs
            s = max(s, be)
    if s < e:
        yield s, e


class Scrubber:
    """Finds PII spans and replaces them with `<TYPE>`. Build once, reuse (patterns are module-level)."""

    def __init__(
        self,
        entities: Iterable[str] = ENTITY_TYPES,
        phone_regions: Sequence[str] = MAJOR_PHONE_REGIONS,
        phone_leniency: str = "valid",
        phone_min_digits: int = 7,
        phone_bare_digits: bool = False,
    ):
        self.entities = frozenset(entities)
        unknown = self.entities - set(ENTITY_TYPES)
        if unknown:
            raise ValueError(f"unknown entity type(s) {sorted(unknown)}; known: {', '.join(ENTITY_TYPES)}")
        self.phones = PhoneFinder(phone_regions, phone_leniency, phone_bare_digits)
        numeric = self.entities & {"CREDIT_CARD", "US_SSN", "IP_ADDRESS", "PHONE_NUMBER", "IBAN_CODE"}
        self._numeric = bool(numeric)
        shortest = min(7, phone_min_digits) if "PHONE_NUMBER" in numeric else 7  # 1.2.3.4 has 7 chars
        self._num_run = re.compile(rf"\d[\d.\-/() {_DASHES}]{{{shortest - 2},}}\d")

    @classmethod
    def from_config(cls, cfg: ScrubConfig) -> Scrubber:
        return cls(
            cfg.entities, cfg.phone_regions, cfg.phone_leniency, cfg.phone_min_digits, cfg.phone_bare_digits
        )

    def find(self, text: str) -> list[Span]:
        """Every PII span of the selected types, overlaps resolved, sorted by start."""
        cands: list[Span] = []
        has = self.entities.__contains__
        if has("EMAIL_ADDRESS") and "@" in text:
            cands += [Span("EMAIL_ADDRESS", s, e) for s, e in entities.emails(text)]
        if has("IP_ADDRESS") and ":" in text:
            cands += [Span("IP_ADDRESS", s, e) for s, e in entities.ipv6s(text)]
        if self._numeric:
            # numbers: only small windows around runs of digits and separators are searched at all
            # (an IBAN's BBAN always has such a run: "DE89 3704 0044 ...", "GB82WEST12345698765432")
            runs = [(m.start(), m.end()) for m in self._num_run.finditer(text)]
            windows = merge_spans(runs, 32, 32, len(text))
            for ws, we in windows:
                if has("IBAN_CODE"):
                    cands += [Span("IBAN_CODE", s, e) for s, e in entities.ibans(text, ws, we)]
                if has("CREDIT_CARD"):
                    cands += [Span("CREDIT_CARD", s, e) for s, e in entities.cards(text, ws, we)]
                if has("US_SSN"):
                    cands += [Span("US_SSN", s, e) for s, e in entities.ssns(text, ws, we)]
                if has("IP_ADDRESS"):
                    cands += [Span("IP_ADDRESS", s, e) for s, e in entities.ipv4s(text, ws, we)]
            if has("PHONE_NUMBER") and windows:
                cands += [Span("PHONE_NUMBER", s, e) for s, e in self._phones(text, windows, cands)]
        return resolve(cands) if cands else []

    def _phones(
        self, text: str, windows: list[tuple[int, int]], claimed: list[Span]
    ) -> Iterator[tuple[int, int]]:
        """Phones outside the spans other detectors `claimed` and outside decimal numbers: a phone
        overlapping a claimed span could only win by being longer, which never happens for real ones."""
        blocked = sorted(
            [(c.start, c.end) for c in claimed]
            + [m.span() for ws, we in windows for m in _DECIMAL_TOKEN.finditer(text, ws, we)]
        )
        for window in windows:
            for ps, pe in _cut(window, blocked):
                yield from self.phones.find(text, ps, pe)

    def scrub(self, text: str) -> tuple[str, list[Span]]:
        """(text with each span replaced by its placeholder, spans with offsets into the original)."""
        spans = self.find(text)
        return redact(text, spans), spans


def redact(text: str, spans: list[Span]) -> str:
    """`text` with each (sorted, non-overlapping) span replaced by its `<TYPE>` placeholder."""
    if not spans:
        return text
    parts, pos = [], 0
    for sp in spans:
        parts += [text[pos : sp.start], placeholder(sp.type)]
        pos = sp.end
    parts.append(text[pos:])
    return "".join(parts)


def scrubbed_offsets(spans: list[Span]) -> list[tuple[int, int]]:
    """Where each span's placeholder sits in the scrubbed text."""
    out, shift = [], 0
    for sp in spans:
        s = sp.start + shift
        out.append((s, s + len(placeholder(sp.type))))
        shift += len(placeholder(sp.type)) - (sp.end - sp.start)
    return out
