"""PHONE_NUMBER: phone numbers from any country, told from the other numbers text is full of.

A permissive candidate regex takes what a phone can look like: an optional international prefix (`+`,
`(+`, `00`), digit groups joined by spaces, dots, dashes, slashes or parentheses (`+44 (0)115 496 0914`,
`(0161) 4960066`, `03.93.92.16.85`, `06-3/740 6812`), and an extension (`x4587`, `ext. 12`). Each
candidate is then weighed:

- international (`+` or `00` and a country code): `phonenumbers` parses it; a number of a possible
  length for its country is a phone, as is any `+` number of 8-15 digits (the `+` says it is one);
- national: `phonenumbers`' metadata of every region in `phone_regions` says whether the digits are a
  valid number (the region's number pattern, trunk prefix stripped) or at least a possible one (its
  lengths). The shape adds evidence: an extension, an area code in parentheses, a trunk `0` with
  grouping, or the NANP 3-3-4 grouping are strong; other phone-like grouping, and bare runs with a
  trunk 0 (9-11 digits) or of a Chinese mobile, are medium; other bare digit runs, thousand-grouped
  numbers (`125 211 694`) are weak (bare ones need a context word or `phone_bare_digits`). A context
  word (`tel`, `phone`, `call`, `mobile`, `fax`, ... in many languages, `CONTEXT_WORDS`) within 40
  characters before the number, or 16 after, with no other number in between, counts like a strong
  shape. `phone_leniency` sets the evidence needed: `possible` 2, `valid` 3 (default),
  `strict_grouping` 3 and the digit groups of one of the region's formats (phonenumbers' matcher),
  `exact_grouping` 4 and the same check. E.g. `(591) 341-7776` (strong + possible) and
  `0490 75 40 81` (strong + valid) pass; `609 141 777` passes after `tel` (weak + valid + context);
  `2147483647` (weak + valid) does not.

Always rejected: dates and date-times (`2023-01-15 10`), decimals (coordinates, tables of floats),
IP-shaped and SSN-shaped numbers, year ranges (`2003-2017`), numbers after a record-number word
(`order`, `invoice`, `#`, ...; guards.negative_context) or an assignment in code (`x = 2147483647`),
version strings, ISBNs and numbers glued to other tokens (guards.context_ok).

Speed: the candidate regex only runs in small windows around runs of digits (the caller's), and the
per-region checks are precompiled regexes cached per digit string (`phonenumbers.parse` once per
region would be ~60 us each).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import phonenumbers

from tasks.common.pii.guards import NONDIGIT, context_ok, glued, is_date, negative_context, starts_with_date

# Words that say the next number is a phone (several languages); they let weaker matches through.
CONTEXT_WORDS: tuple[str, ...] = (
    "tel", "tél", "tlf", "telephone", "téléphone", "phone", "ph", "call", "calls", "called", "calling",
    "mobile", "mob", "cell", "cellphone", "fax", "contact", "reach", "ring", "text", "sms", "whatsapp",
    "hotline", "number", "dial", "landline", "telefon", "telefonnummer", "handy", "rufnummer", "anrufen",
    "mobil", "portable", "appeler", "appelez", "numéro", "teléfono", "telefono", "móvil", "movil",
    "celular", "llamar", "llame", "telefone", "telemóvel", "ligar", "cellulare", "chiamare", "chiama",
    "telefoon", "bellen", "mobiel", "telefonu", "komórka", "komórkowy", "puhelin", "matkapuhelin",
    "telefonszám", "telefonní", "mobilní", "телефон", "тел", "моб", "звоните", "звонить", "телефону",
    "電話", "电话", "手机", "携帯", "전화", "휴대폰", "โทร", "điện thoại", "sđt", "هاتف", "جوال", "טלפון",
    "τηλέφωνο", "τηλ", "telepon", "hp", "numara", "telefonu", "cep",
)  # fmt: skip
_CONTEXT = re.compile(
    r"(?<![^\W\d_])(?:"
    + "|".join(sorted(map(re.escape, CONTEXT_WORDS), key=len, reverse=True))
    + r")(?![^\W\d_])",
    re.I,
)
_CONTEXT_BEFORE, _CONTEXT_AFTER = 40, 16

_SEP = "[ .\\-/()\u2010-\u2015\u2212\u00a0]"  # Unicode hyphens/dashes, minus, no-break space too
# An optional international prefix, 7+ digits in groups, an optional extension; possessive, so a number
# glued to a letter is dropped at once rather than shortened.
CANDIDATE = re.compile(
    rf"(?<![\w+(])[+(]{{0,2}}\d(?:{_SEP}{{0,3}}\d){{5,24}}+"
    r"(?:\s{0,2},?\s{0,2}(?:x|ext\.?|extn\.?|extension|doppio|durchwahl|poste|доб\.?)\s{0,2}\d{1,6})?+(?!\w)",
    re.I,
)
_EXTENSION = re.compile(
    r"\s{0,2},?\s{0,2}(?:x|ext\.?|extn\.?|extension|doppio|durchwahl|poste|доб\.?)\s{0,2}\d{1,6}$", re.I
)
_INTERNATIONAL = re.compile(r"^(?:\(?\+\s?\(?|\(?00)([1-9]\d{0,2})")
_TRUNK = re.compile(r"\(0\)\s?")
_GROUPS = re.compile(r"\d+")
_NANP = re.compile(r"(?:1[ .-]?)?(?:\(\d{3}\)\s?|\d{3}([ .-]))\d{3}[ .-]\d{4}")
_PAREN_AREA = re.compile(r"^\(\+?\d{1,5}\)")
# bare digit runs that are phones more often than not: a trunk 0 and 9-11 digits, a Chinese mobile
_BARE_PHONE = re.compile(r"0[1-9]\d{7,9}|1[3-9]\d{9}")
_DIGIT_OR_LINE = re.compile(r"[\d\n]")
_ASSIGNED = re.compile(r"[\w\])]\s*=\s*[\"']?$")  # `timeout = 2147483647`: a constant in code
_YEARS = re.compile(r"(?:19|20)\d\d\s?[-/]\s?(?:19|20)\d\d")
_DECIMAL = re.compile(r"[+-]?\d+[.,]\d+")
# never phones: IP addresses, valid or not (256.10.10.10), and SSN-shaped numbers (000-12-3456)
_NOT_PHONE = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}|\d{3}([- ])\d\d\1\d{4}")
_LEVEL = {"possible": 2, "valid": 3, "strict_grouping": 3, "exact_grouping": 4}


@dataclass(frozen=True, slots=True)
class _Region:
    code: str
    prefix: str  # national (trunk) prefix, "" if none
    pattern: re.Pattern[str]
    lengths: frozenset[int]

    def check(self, digits: str) -> int:
        """2: a valid national number here, 1: a possible one (its length), 0: neither."""
        best = 0
        tails = [digits[len(self.prefix) :]] if self.prefix and digits.startswith(self.prefix) else []
        for nsn in [*tails, digits]:
            if self.pattern.fullmatch(nsn):
                return 2
            if len(nsn) in self.lengths and (nsn is not digits or digits[0] != "0" or self.prefix == "0"):
                best = 1  # a leading 0 is a trunk prefix: possible only where the region dials one
        return best


@lru_cache(maxsize=512)
def _region(code: str) -> _Region | None:
    meta = phonenumbers.PhoneMetadata.metadata_for_region(code)
    desc = meta.general_desc if meta is not None else None
    pattern = desc.national_number_pattern if desc is not None else None
    if meta is None or desc is None or pattern is None:
        return None
    lengths = frozenset((desc.possible_length or ()) + (desc.possible_length_local_only or ()))
    return _Region(code, meta.national_prefix or "", re.compile(pattern), lengths)


@lru_cache(maxsize=64)
def _regions(codes: tuple[str, ...]) -> tuple[_Region, ...]:
    return tuple(r for r in map(_region, codes) if r is not None)


@lru_cache(maxsize=65536)
def national_level(digits: str, codes: tuple[str, ...]) -> int:
    """The best of `_Region.check` over the regions: 2 valid somewhere, 1 possible somewhere, 0 none."""
    best = 0
    for region in _regions(codes):
        best = max(best, region.check(digits))
        if best == 2:
            break
    return best


@lru_cache(maxsize=65536)
def international_ok(number: str) -> bool:
    """`+CC...`: a possible number for its country code per phonenumbers, or any 8-15 digits."""
    digits = NONDIGIT.sub("", number)
    if not 8 <= len(digits) <= 15:
        return False
    try:
        parsed = phonenumbers.parse("+" + digits, None)
    except phonenumbers.NumberParseException:
        return True  # an unknown country code, but written as an international number
    return bool(phonenumbers.is_possible_number(parsed)) or len(digits) >= 10


def has_context(text: str, s: int, e: int) -> bool:
    """A phone word just before [s, e) (within 40 characters) or just after it (16), on the same line
    and with no other number in between: in "call 555-0187 or order 12345678" the word is the first
    number's only, and "most recent call last):\\n...\\nValueError: 50331648" has none."""
    for m in _CONTEXT.finditer(text, max(0, s - _CONTEXT_BEFORE), s):
        if not _DIGIT_OR_LINE.search(text, m.end(), s):
            return True
    after = _CONTEXT.search(text, e, min(len(text), e + _CONTEXT_AFTER))
    return after is not None and not _DIGIT_OR_LINE.search(text, e, after.start())


def _shape(core: str, has_ext: bool) -> int:
    """2: strong phone shape, 1: phone-like grouping, 0: bare digits or another number's grouping."""
    groups = _GROUPS.findall(core)
    if has_ext or _PAREN_AREA.match(core) or _NANP.fullmatch(core):
        return 2
    if len(groups) == 1:
        return 1 if _BARE_PHONE.fullmatch(core) else 0
    first, rest = groups[0], groups[1:]
    if all(len(g) == 3 for g in rest) and len(first) <= 3 and len({c for c in core if not c.isdigit()}) == 1:
        return 0  # grouped like thousands (125 211 694): a phone only with a context word (609 141 777)
    if first.startswith("0") and not first.startswith("00"):
        return 2  # a trunk prefix: 0490 75 40 81, 07700 063 966, (0)161 ...
    return 1 if all(len(g) >= 2 for g in rest) else 0


_MATCHER_LENIENCY = {
    "strict_grouping": phonenumbers.Leniency.STRICT_GROUPING,
    "exact_grouping": phonenumbers.Leniency.EXACT_GROUPING,
}


@lru_cache(maxsize=16384)
def grouped_like_region(core: str, codes: tuple[str, ...], leniency: str) -> bool:
    """phonenumbers' own grouping check (PhoneNumberMatcher at `leniency`) in a region where the digits
    are valid: the digit groups are those of one of the region's formats."""
    digits = NONDIGIT.sub("", core)
    valid = [r.code for r in _regions(codes) if r.check(digits) == 2][:4]  # the matcher is slow (~0.2 ms)
    for code in valid:
        for m in phonenumbers.PhoneNumberMatcher(core, code, leniency=_MATCHER_LENIENCY[leniency]):
            if m.start == 0 and m.end == len(core):
                return True
    return False


class PhoneFinder:
    """Phone numbers in text, for one configuration (regions, leniency, bare digits)."""

    def __init__(self, regions: Sequence[str], leniency: str = "valid", bare_digits: bool = False):
        self.regions = tuple(r.upper() for r in regions if r.upper() != "ZZ")
        self.leniency = leniency
        self.level = _LEVEL[leniency]
        self.bare_digits = bare_digits

    def find(self, text: str, ws: int, we: int) -> Iterator[tuple[int, int]]:
        for m in CANDIDATE.finditer(text, ws, we):
            span = self.judge(text, m.start(), m.end())
            if span is not None:
                yield span

    def judge(self, text: str, s: int, e: int) -> tuple[int, int] | None:
        """The phone's span within the candidate [s, e), or None if it is not one."""
        raw = text[s:e]
        if raw.startswith("(") and raw.count("(") > raw.count(")"):
            s, raw = s + 1, raw[1:]  # "(call 555-1234)": the parenthesis belongs to the prose
        ext = _EXTENSION.search(raw)
        core = raw[: ext.start()] if ext else raw
        digits = NONDIGIT.sub("", core)
        if not 7 <= len(digits) <= 17 or _DECIMAL.fullmatch(core) or _NOT_PHONE.fullmatch(core):
            return None
        if is_date(core) or starts_with_date(core):
            return None
        if glued(text, s, e) or not context_ok(text, s, e):
            return None
        if negative_context(text, s) or _ASSIGNED.search(text, max(0, s - 40), s) or _YEARS.fullmatch(core):
            return None  # a record number, a constant in code, a range of years
        context = has_context(text, s, e)
        if _INTERNATIONAL.match(core) and (core.lstrip("(").startswith("+") or len(digits) >= 10):
            return (s, e) if international_ok(_TRUNK.sub("", core)) else None
        return (s, e) if self._national(core, digits, bool(ext), context) else None

    def _national(self, core: str, digits: str, has_ext: bool, context: bool) -> bool:
        if len(digits) > 13 or not self.regions:
            return False
        shape = _shape(core, has_ext)
        if shape == 0 and len(digits) == len(core):
            if not (context or self.bare_digits):
                return False  # a bare digit run: a constant, an id, a count, far more often than a phone
            shape = 1 if self.bare_digits else 0
        level = national_level(digits, self.regions)
        if level == 0:
            return False
        if self.leniency in _MATCHER_LENIENCY and shape < 2 and not context:
            if not grouped_like_region(core, self.regions, self.leniency):
                return False
        return shape + level + (2 if context else 0) >= self.level
