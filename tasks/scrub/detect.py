"""PII detection: candidate regexes, then validators and context checks that tell PII from look-alikes.

Each entity has a cheap, precompiled candidate pattern (or prefilter) and a validator:

- EMAIL_ADDRESS: RFC-shaped local@domain; the last label must be a real top-level domain (the public
  suffix list shipped with `tld`), so `x@y.shape` (matmul in code) and `icon@2x.png` are not emails.
  Trade-off: addresses at private names (`a@b.corp`) are missed unless the name is in `_PRIVATE_TLDS`,
  and so are non-ASCII (internationalized) addresses.
- PHONE_NUMBER: `phonenumbers.PhoneNumberMatcher` (region and leniency from config; the default
  `strict_grouping` wants the digit groups of a real format, so part numbers like 33471-90901 are not
  phones). It is slow, so it only runs on small windows around runs of >= `phone_min_digits` digits.
  Bare digit runs without `+` (2147483648, 4155552671) are constants far more often than phones in
  code and docs, so they are skipped unless `phone_bare_digits`. Trade-off: vanity numbers
  (1-800-FLOWERS), unformatted numbers and numbers glued to letters or digits are not found.
- IP_ADDRESS: dotted quads and IPv6 parsed by `ipaddress` (so 999.1.1.1 and 01.2.3.4 are rejected).
  IPv6 needs a digit and either 3+ groups or a 3+ digit group, so slices like `x[1::2]` and C++/Rust
  paths like `cafe::bad` are not addresses. Trade-off: `::1` is not found.
- CREDIT_CARD: 13-19 digits, contiguous or in 4-4-4-x / 4-6-5 groups with one consistent separator,
  an issuer prefix (IIN) valid for that length, and the Luhn checksum.
- US_SSN: AAA-GG-SSSS with a dash or space separator (area not 000/666/900-999, group not 00, serial
  not 0000). Trade-off: nine bare digits are not taken as an SSN (too many false positives: IDs, ZIPs).
- IBAN_CODE: upper-case country code + check digits, the country's exact length (spaces only between
  groups of 4) and the mod-97 checksum. Trade-off: lower-case IBANs are missed.

Speed: patterns starting with a lookbehind defeat `re`'s fast scan, so the text is scanned once for
runs of >= 7 digits/separators (and for `@`, `::`), and the number patterns only run in small
windows around those runs (an IBAN's BBAN always has such a run).

Context rules for the numeric types (phone, card, SSN, IP), against the classic false positives:
- glued tokens: a match preceded or followed by a word character, or by `.`/`-` plus a word character,
  is part of something bigger: dotted identifiers (`mod.1.2.3.4`), OIDs, hex hashes, UUIDs, paths;
- version strings: preceded by `version`, `ver`, `v`, `release`, `build`, `rev` (`__version__ = "..."`
  too), or an unquoted pin `pkg==`, `>=`, `~=` ... (`host == "10.0.0.1"`, quoted, is still an IP),
  and section/figure references (`section 1.2.3.4`);
- ISBNs: preceded by `ISBN`, or an ISBN-13 (978/979 + checksum) or hyphenated ISBN-10 checksum;
- dates: a phone candidate shaped like a date (2023-01-15, 15.01.2023, 01/15/23) is a date.
Trade-off: real PII written right after such words ("version 10.0.0.1") or glued to text is kept.

Overlaps resolve deterministically: longest span first, then entity priority (`ENTITY_TYPES` order),
then leftmost. Phones, the least specific type, are only looked for outside the spans the other
detectors claimed and outside decimal numbers (which also keeps IP lists and number tables away from
the slow matcher; digit-dense text is still the slowest input). Offsets are Python string indices
(code points) into the original text.
"""

from __future__ import annotations

import bisect
import ipaddress
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache

import phonenumbers

from conf.scrub import ENTITY_TYPES, ScrubConfig

PRIORITY = {t: i for i, t in enumerate(ENTITY_TYPES)}


@dataclass(frozen=True, slots=True)
class Span:
    type: str
    start: int
    end: int

    def to_json(self) -> dict:
        return {"type": self.type, "start": self.start, "end": self.end}


def placeholder(entity: str) -> str:
    return f"<{entity}>"


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


# ---- EMAIL_ADDRESS ---------------------------------------------------------------------------------
_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9_%+-](?:[A-Za-z0-9._%+-]{0,62}[A-Za-z0-9_%+-])?"
    r"@((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+([A-Za-z]{2,24}))(?![\w-]|\.[A-Za-z0-9])"
)
_EMAIL_TAIL = re.compile(r"[\w-]|\.[A-Za-z0-9]")  # the regex's lookahead, rechecked past a window's end
_AT = re.compile("@")
_PRIVATE_TLDS = frozenset({"local", "internal", "lan", "corp", "home", "localdomain"})


@lru_cache(maxsize=4096)
def _is_tld(label: str) -> bool:
    from tld import is_tld

    return label in _PRIVATE_TLDS or is_tld(label)


def _emails(text: str) -> Iterator[tuple[int, int]]:
    ats = [m.start() for m in _AT.finditer(text)]
    for ws, we in merge_windows(ats, 65, 300, len(text)):
        for m in _EMAIL.finditer(text, ws, we):
            s, e = m.span()
            local = text[s : text.index("@", s)]
            if ".." in local or len(m.group(1)) > 253 or _EMAIL_TAIL.match(text, e):
                continue
            if _is_tld(m.group(2).lower()):
                yield s, e


# ---- context guards shared by the numeric types -------------------------------------------------
_CONTEXT_WORDS = (
    r"version|versions|ver|v|release|rel|build|rev|revision|tag|section|sections|sec|chapter|figure|fig|§"
)
_VERSION_CTX = re.compile(
    rf"(?:(?<![A-Za-z0-9])(?:{_CONTEXT_WORDS})_*\.?\s*(?:is\s+|[:=#]\s*)?[\"'(]?|(?<=[\w\]])\s*[=<>!~]=\s*)$",
    re.I,
)
_ISBN_CTX = re.compile(r"\bISBN(?:-?1[03])?:?\s*$", re.I)
_DATE = re.compile(r"(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})|(\d{1,2})([-/.])(\d{1,2})\5(\d{2}|\d{4})")
_NONDIGIT = re.compile(r"\D")


def _wordy(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _glued(text: str, s: int, e: int) -> bool:
    """Part of a bigger token: identifiers, dotted names, hashes, UUIDs, longer numbers."""
    if s >= 1 and (_wordy(text[s - 1]) or (s >= 2 and text[s - 1] in ".-" and _wordy(text[s - 2]))):
        return True
    n = len(text)
    return e < n and (_wordy(text[e]) or (e + 1 < n and text[e] in ".-" and _wordy(text[e + 1])))


def _isbn(raw: str) -> bool:
    digits = _NONDIGIT.sub("", raw)
    if len(digits) == 13 and digits[:3] in ("978", "979"):
        return sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(digits)) % 10 == 0
    parts = raw.split("-")
    if len(parts) == 4 and len(digits) == 10:
        return sum(int(d) * (10 - i) for i, d in enumerate(digits)) % 11 == 0
    return False


def _is_date(raw: str) -> bool:
    m = _DATE.fullmatch(raw.strip("() "))
    if not m:
        return False
    if m.group(1):
        month, day = int(m.group(2)), int(m.group(3))
    else:
        a, b = int(m.group(4)), int(m.group(6))
        month, day = (a, b) if a <= 12 else (b, a)
    return 1 <= month <= 12 and 1 <= day <= 31


def _context_ok(text: str, s: int, e: int) -> bool:
    """False when the surroundings say this number is something else (version, ISBN, part of a token)."""
    if _glued(text, s, e):
        return False
    before = text[max(0, s - 24) : s]
    if _VERSION_CTX.search(before) or _ISBN_CTX.search(before):
        return False
    return not _isbn(text[s:e])


# ---- IP_ADDRESS ----------------------------------------------------------------------------------
_IPV4 = re.compile(r"(?<!\w)(?<!\w\.)(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\w)")
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4})?(?![\w:]|\.\w)"
)

_IPV6_HINT = re.compile(r"::|:[0-9A-Fa-f]{1,4}:")
_IPV6_TAIL = re.compile(r"[\w:]|\.\w")


def _ipv6_plausible(raw: str) -> bool:
    groups = [g for g in raw.split(":") if g]
    return any(c.isdigit() for c in raw) and (len(groups) >= 3 or any(len(g) >= 3 for g in groups))


def _ipv4s(text: str, ws: int, we: int) -> Iterator[tuple[int, int]]:
    for m in _IPV4.finditer(text, ws, we):
        try:
            ipaddress.IPv4Address(m.group())
        except ValueError:
            continue
        if _context_ok(text, m.start(), m.end()):
            yield m.start(), m.end()


def _ipv6s(text: str) -> Iterator[tuple[int, int]]:
    hints = [m.start() for m in _IPV6_HINT.finditer(text)]
    for ws, we in merge_windows(hints, 45, 45, len(text)):
        for m in _IPV6.finditer(text, ws, we):
            raw = m.group()
            if not _ipv6_plausible(raw) or _IPV6_TAIL.match(text, m.end()):
                continue
            try:
                ipaddress.IPv6Address(raw)
            except ValueError:
                continue
            yield m.start(), m.end()


# ---- CREDIT_CARD ----------------------------------------------------------------------------------
_CARD = re.compile(
    r"(?<![\w.,+-])(?:\d{4}(?P<s>[ -])\d{4}(?P=s)\d{4}(?P=s)\d{1,4}(?:(?P=s)\d{3})?"
    r"|\d{4}(?P<t>[ -])\d{6}(?P=t)\d{4,5}|\d{13,19})(?!\w|[.,-]\d)"
)
# (lowest prefix, highest prefix, allowed lengths): Visa, Mastercard, Amex, Discover, Diners, JCB,
# UnionPay, Maestro.
_ALL = tuple(range(13, 20))
_IIN = (
    ("4", "4", (13, 16, 19)),
    ("51", "55", (16,)),
    ("2221", "2720", (16,)),
    ("34", "34", (15,)),
    ("37", "37", (15,)),
    ("6011", "6011", (16, 17, 18, 19)),
    ("644", "649", (16, 19)),
    ("65", "65", (16, 19)),
    ("300", "305", (14, 16, 19)),
    ("36", "36", (14, 16, 19)),
    ("38", "39", (16, 19)),
    ("3528", "3589", (16, 17, 18, 19)),
    ("62", "62", (16, 17, 18, 19)),
    ("50", "50", _ALL),
    ("56", "69", _ALL),
)


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_ok(digits: str) -> bool:
    n = len(digits)
    if not 13 <= n <= 19 or len(set(digits)) == 1:
        return False
    if not any(lo <= digits[: len(lo)] <= hi and n in lengths for lo, hi, lengths in _IIN):
        return False
    return luhn_ok(digits)


def _cards(text: str, ws: int, we: int) -> Iterator[tuple[int, int]]:
    for m in _CARD.finditer(text, ws, we):
        if card_ok(_NONDIGIT.sub("", m.group())) and _context_ok(text, m.start(), m.end()):
            yield m.start(), m.end()


# ---- US_SSN ----------------------------------------------------------------------------------------
_SSN = re.compile(r"(?<![\w.,+-])(\d{3})([- ])(\d{2})\2(\d{4})(?!\w|[.,-]\d)")


def ssn_ok(area: str, group: str, serial: str) -> bool:
    a = int(area)
    return a != 0 and a != 666 and a < 900 and group != "00" and serial != "0000"


def _ssns(text: str, ws: int, we: int) -> Iterator[tuple[int, int]]:
    for m in _SSN.finditer(text, ws, we):
        if ssn_ok(m.group(1), m.group(3), m.group(4)) and _context_ok(text, m.start(), m.end()):
            yield m.start(), m.end()


# ---- IBAN_CODE -------------------------------------------------------------------------------------
IBAN_LENGTHS = {
    "AD": 24,
    "AE": 23,
    "AL": 28,
    "AT": 20,
    "AZ": 28,
    "BA": 20,
    "BE": 16,
    "BG": 22,
    "BH": 22,
    "BI": 27,
    "BR": 29,
    "BY": 28,
    "CH": 21,
    "CR": 22,
    "CY": 28,
    "CZ": 24,
    "DE": 22,
    "DJ": 27,
    "DK": 18,
    "DO": 28,
    "EE": 20,
    "EG": 29,
    "ES": 24,
    "FI": 18,
    "FK": 18,
    "FO": 18,
    "FR": 27,
    "GB": 22,
    "GE": 22,
    "GI": 23,
    "GL": 18,
    "GR": 27,
    "GT": 28,
    "HN": 28,
    "HR": 21,
    "HU": 28,
    "IE": 22,
    "IL": 23,
    "IQ": 23,
    "IS": 26,
    "IT": 27,
    "JO": 30,
    "KW": 30,
    "KZ": 20,
    "LB": 28,
    "LC": 32,
    "LI": 21,
    "LT": 20,
    "LU": 20,
    "LV": 21,
    "LY": 25,
    "MC": 27,
    "MD": 24,
    "ME": 22,
    "MK": 19,
    "MN": 20,
    "MR": 27,
    "MT": 31,
    "MU": 30,
    "NI": 28,
    "NL": 18,
    "NO": 15,
    "OM": 23,
    "PK": 24,
    "PL": 28,
    "PS": 29,
    "PT": 25,
    "QA": 29,
    "RO": 24,
    "RS": 22,
    "RU": 33,
    "SA": 24,
    "SC": 31,
    "SD": 18,
    "SE": 24,
    "SI": 19,
    "SK": 24,
    "SM": 27,
    "SO": 23,
    "ST": 25,
    "SV": 28,
    "TL": 23,
    "TN": 24,
    "TR": 26,
    "UA": 29,
    "VA": 22,
    "VG": 24,
    "XK": 20,
    "YE": 30,
}
_IBAN_START = re.compile(r"([A-Z][A-Z])\d\d(?=[A-Z0-9]| [A-Z0-9])")


def iban_ok(compact: str) -> bool:
    if IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    moved = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _iban_end(text: str, start: int, length: int) -> int | None:
    """End of the IBAN of `length` characters starting at `start` (single spaces allowed), or None."""
    i, n, size = start + 4, 4, len(text)
    while n < length and i < size:
        c = text[i]
        if c == " " and text[i - 1] != " ":
            i += 1
        elif "A" <= c <= "Z" or "0" <= c <= "9":
            n += 1
            i += 1
        else:
            break
    if n < length or text[i - 1] == " " or (i < size and text[i].isalnum()):
        return None  # too short, or longer than the country's IBAN ("... 00 THEN" stops at 00)
    return i


def _ibans(text: str, ws: int, we: int) -> Iterator[tuple[int, int]]:
    pos = ws
    while m := _IBAN_START.search(text, pos, we):
        pos = m.end()
        if m.start() and text[m.start() - 1].isalnum():
            continue
        length = IBAN_LENGTHS.get(m.group(1))
        end = _iban_end(text, m.start(), length) if length else None
        if end is None:
            continue
        raw = text[m.start() : end]
        if " " in raw and any(len(g) != 4 for g in raw.split(" ")[:-1]):
            continue
        if iban_ok(raw.replace(" ", "")):
            yield m.start(), end
            pos = end


# ---- PHONE_NUMBER ----------------------------------------------------------------------------------
_LENIENCY = {
    "possible": phonenumbers.Leniency.POSSIBLE,
    "valid": phonenumbers.Leniency.VALID,
    "strict_grouping": phonenumbers.Leniency.STRICT_GROUPING,
    "exact_grouping": phonenumbers.Leniency.EXACT_GROUPING,
}
_DASHES = (
    "\u2010-\u2015\u2212\u00a0"  # Unicode hyphens/dashes, minus, no-break space: phonenumbers takes them
)
_PAD_BEFORE, _PAD_AFTER = 8, 24  # room for "+", "(", "tel:" before and extensions/timestamps after


@lru_cache(maxsize=32)
def _phone_hint(min_digits: int) -> re.Pattern:
    return re.compile(rf"\d(?:[ \t().\-/{_DASHES}]{{0,3}}\d){{{min_digits - 1},}}")


_DECIMAL = re.compile(r"[+-]?\d+\.\d+")
_DECIMAL_TOKEN = re.compile(r"(?<![\d.])\d+\.\d+(?![\d.])")


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


def _phones(
    text: str,
    windows: list[tuple[int, int]],
    region: str,
    leniency,
    min_digits: int,
    bare: bool,
    claimed: list[tuple[int, int]],
):
    """Phone numbers, outside the spans other detectors `claimed` and outside decimal numbers.

    Cutting those out first keeps digit-dense text (IP lists, tables of decimals) away from the slow
    matcher; a phone overlapping a claimed span could only win by being longer, which never happens
    for real numbers.
    """
    hint = _phone_hint(min_digits)
    blocked = sorted(
        claimed + [m.span() for ws, we in windows for m in _DECIMAL_TOKEN.finditer(text, ws, we)]
    )
    spans = []
    for ws, we in windows:
        for m in hint.finditer(text, ws, we):
            for ps, pe in _cut(m.span(), blocked):
                piece = hint.search(text, ps, pe)
                if piece is None:
                    continue
                raw = piece.group()
                if (
                    not bare and raw.isdigit() and text[piece.start() - 1 : piece.start()] != "+"
                ) or _is_date(raw):
                    continue  # cheap rejections before the (slow) matcher: bare digit runs, dates
                spans.append(piece.span())
    for ws, we in merge_spans(spans, _PAD_BEFORE, _PAD_AFTER, len(text)):
        for m in phonenumbers.PhoneNumberMatcher(text[ws:we], region, leniency=leniency):
            s, e, raw = ws + m.start, ws + m.end, m.raw_string
            if (not bare and raw.isdigit()) or _DECIMAL.fullmatch(raw) or _is_date(raw):
                continue
            if _context_ok(text, s, e):
                yield s, e


# ---- the scrubber ------------------------------------------------------------------------------------
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


class Scrubber:
    """Finds PII spans and replaces them with `<TYPE>`. Build once, reuse (patterns are module-level)."""

    def __init__(
        self,
        entities: Iterable[str] = ENTITY_TYPES,
        phone_region: str = "US",
        phone_leniency: str = "strict_grouping",
        phone_min_digits: int = 7,
        phone_bare_digits: bool = False,
    ):
        self.entities = frozenset(entities)
        unknown = self.entities - set(ENTITY_TYPES)
        if unknown:
            raise ValueError(f"unknown entity type(s) {sorted(unknown)}; known: {', '.join(ENTITY_TYPES)}")
        self.region = phone_region.upper()
        self.leniency = _LENIENCY[phone_leniency]
        self.min_digits = phone_min_digits
        self.bare_digits = phone_bare_digits
        numeric = self.entities & {"CREDIT_CARD", "US_SSN", "IP_ADDRESS", "PHONE_NUMBER", "IBAN_CODE"}
        self._numeric = bool(numeric)
        shortest = min(7, phone_min_digits) if "PHONE_NUMBER" in numeric else 7  # 1.2.3.4 has 7 chars
        self._num_run = re.compile(rf"\d[\d.\-/() {_DASHES}]{{{shortest - 2},}}\d")

    @classmethod
    def from_config(cls, cfg: ScrubConfig) -> Scrubber:
        return cls(
            cfg.entities, cfg.phone_region, cfg.phone_leniency, cfg.phone_min_digits, cfg.phone_bare_digits
        )

    def find(self, text: str) -> list[Span]:
        """Every PII span of the selected types, overlaps resolved, sorted by start."""
        cands: list[Span] = []
        has = self.entities.__contains__
        if has("EMAIL_ADDRESS") and "@" in text:
            cands += [Span("EMAIL_ADDRESS", s, e) for s, e in _emails(text)]
        if has("IP_ADDRESS") and ":" in text:
            cands += [Span("IP_ADDRESS", s, e) for s, e in _ipv6s(text)]
        if self._numeric:
            # numbers: only small windows around runs of digits and separators are searched at all
            # (an IBAN's BBAN always has such a run: "DE89 3704 0044 ...", "GB82WEST12345698765432")
            runs = [(m.start(), m.end()) for m in self._num_run.finditer(text)]
            windows = merge_spans(runs, 32, 32, len(text))
            for ws, we in windows:
                if has("IBAN_CODE"):
                    cands += [Span("IBAN_CODE", s, e) for s, e in _ibans(text, ws, we)]
                if has("CREDIT_CARD"):
                    cands += [Span("CREDIT_CARD", s, e) for s, e in _cards(text, ws, we)]
                if has("US_SSN"):
                    cands += [Span("US_SSN", s, e) for s, e in _ssns(text, ws, we)]
                if has("IP_ADDRESS"):
                    cands += [Span("IP_ADDRESS", s, e) for s, e in _ipv4s(text, ws, we)]
            if has("PHONE_NUMBER") and windows:
                claimed = [(c.start, c.end) for c in cands]
                found = _phones(
                    text, windows, self.region, self.leniency, self.min_digits, self.bare_digits, claimed
                )
                cands += [Span("PHONE_NUMBER", s, e) for s, e in found]
        return resolve(cands) if cands else []

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
