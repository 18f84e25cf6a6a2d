"""Context guards shared by the numeric PII types: what tells a number that is PII from a look-alike.

- glued tokens: a match preceded or followed by a word character, or by `.`/`-` plus a word character,
  is part of something bigger: dotted identifiers (`mod.1.2.3.4`), OIDs, hex hashes, UUIDs, paths;
- version strings: preceded by `version`, `ver`, `v`, `release`, `build`, `rev` (`__version__ = "..."`
  too), or an unquoted pin `pkg==`, `>=`, `~=` ... (`host == "10.0.0.1"`, quoted, is still an IP),
  and section/figure references (`section 1.2.3.4`);
- ISBNs: preceded by `ISBN`, or an ISBN-13 (978/979 + checksum) or hyphenated ISBN-10 checksum;
- dates: a number shaped like a date (2023-01-15, 15.01.2023, 01/15/23) is a date;
- identifiers: a number right after `order`, `invoice`, `tracking`, `ticket`, `ref`, `id`, `#`, ...
  (`negative_context`) is a record number (for cards, a card word nearby still wins).
Trade-off: real PII written right after such words ("version 10.0.0.1") or glued to text is kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# ---- windows ---------------------------------------------------------------------------------------


def merge_spans(
    spans: Iterable[tuple[int, int]], before: int, after: int, size: int
) -> list[tuple[int, int]]:
    """Spans (sorted by start) widened by `before`/`after`, clipped to [0, size], overlaps merged."""
    out: list[list[int]] = []
    for s, e in spans:
        s, e = max(0, s - before), min(size, e + after)
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def merge_windows(positions: Iterable[int], before: int, after: int, size: int) -> list[tuple[int, int]]:
    return merge_spans(((p, p) for p in positions), before, after, size)


# ---- look-alike guards -----------------------------------------------------------------------------
_CONTEXT_WORDS = (
    r"version|versions|ver|v|release|rel|build|rev|revision|tag|section|sections|sec|chapter|figure|fig|§"
)
_VERSION_CTX = re.compile(
    rf"(?:(?<![A-Za-z0-9])(?:{_CONTEXT_WORDS})_*\.?\s*(?:is\s+|[:=#]\s*)?[\"'(]?|(?<=[\w\]])\s*[=<>!~]=\s*)$",
    re.I,
)
_ISBN_CTX = re.compile(r"\bISBN(?:-?1[03])?:?\s*$", re.I)
DATE = re.compile(r"(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})|(\d{1,2})([-/.])(\d{1,2})\5(\d{2}|\d{4})")
NONDIGIT = re.compile(r"\D")

# Words after which a number is a record number, not PII (several languages); the number may follow
# within a few characters ("Order no. 123", "tracking #: 1Z...", "Bestellnummer: 123").
_NEGATIVE_WORDS = (
    r"order|orders|invoice|inv|receipt|tracking|track|shipment|parcel|package|ticket|case|incident|issue|"
    r"ref|reference|id|ids|uid|pid|serial|sn|sku|part|item|model|po|batch|lot|build|job|run|pr|"
    r"isbn|issn|doi|ean|upc|gtin|asin|zip|postcode|postal|plz|"
    r"bestellung|bestellnummer|rechnung|rechnungsnummer|sendungsnummer|auftrag|kundennummer|"
    r"commande|facture|suivi|colis|pedido|factura|seguimiento|ordine|fattura|spedizione|"
    r"заказ|счет|счёт|накладная|注文|订单|運単|单号|주문"
)
_NEGATIVE_CTX = re.compile(
    rf"(?:(?<![^\W\d_])(?:{_NEGATIVE_WORDS})(?![^\W\d_])[\s.:#=-]*(?:no\.?|nr\.?|num\.?|number|n°|№)?"
    rf"[\s.:#=-]*|#\s*)$",
    re.I,
)


def _wordy(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def glued(text: str, s: int, e: int) -> bool:
    """Part of a bigger token: identifiers, dotted names, hashes, UUIDs, longer numbers."""
    if s >= 1 and (_wordy(text[s - 1]) or (s >= 2 and text[s - 1] in ".-" and _wordy(text[s - 2]))):
        return True
    n = len(text)
    return e < n and (_wordy(text[e]) or (e + 1 < n and text[e] in ".-" and _wordy(text[e + 1])))


def isbn(raw: str) -> bool:
    digits = NONDIGIT.sub("", raw)
    if len(digits) == 13 and digits[:3] in ("978", "979"):
        return sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(digits)) % 10 == 0
    parts = raw.split("-")
    if len(parts) == 4 and len(digits) == 10:
        return sum(int(d) * (10 - i) for i, d in enumerate(digits)) % 11 == 0
    return False


def _valid_date(m: re.Match[str]) -> bool:
    if m.group(1):
        month, day = int(m.group(2)), int(m.group(3))
    else:
        a, b = int(m.group(4)), int(m.group(6))
        month, day = (a, b) if a <= 12 else (b, a)
    return 1 <= month <= 12 and 1 <= day <= 31


def is_date(raw: str) -> bool:
    m = DATE.fullmatch(raw.strip("() "))
    return m is not None and _valid_date(m)


def starts_with_date(raw: str) -> bool:
    """A date, possibly followed by a time or more ("2023-01-15 10", "15.01.2023 12")."""
    m = DATE.match(raw.lstrip("( "))
    return m is not None and _valid_date(m)


def negative_context(text: str, s: int) -> bool:
    """The number at `s` follows a record-number word (`order`, `invoice`, `#`, ...)."""
    return _NEGATIVE_CTX.search(text, max(0, s - 32), s) is not None


def context_ok(text: str, s: int, e: int) -> bool:
    """False when the surroundings say this number is something else (version, ISBN, part of a token)."""
    if glued(text, s, e):
        return False
    before = text[max(0, s - 24) : s]
    if _VERSION_CTX.search(before) or _ISBN_CTX.search(before):
        return False
    return not isbn(text[s:e])


def near_word(pattern: re.Pattern[str], text: str, s: int, e: int, before: int, after: int) -> bool:
    """`pattern` occurs within `before` characters before `s` or `after` characters after `e`."""
    return pattern.search(text, max(0, s - before), s) is not None or (
        after > 0 and pattern.search(text, e, min(len(text), e + after)) is not None
    )
