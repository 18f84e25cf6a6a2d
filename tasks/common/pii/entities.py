"""Detectors of the structured PII types other than phones: candidate regexes plus validators.

- EMAIL_ADDRESS: RFC-shaped local@domain; the last label must be a real top-level domain (the public
  suffix list shipped with `tld`), so `x@y.shape` (matmul in code) and `icon@2x.png` are not emails.
  Trade-off: addresses at private names (`a@b.corp`) are missed unless the name is in `_PRIVATE_TLDS`,
  and so are non-ASCII (internationalized) addresses.
- IP_ADDRESS: dotted quads and IPv6 parsed by `ipaddress` (so 999.1.1.1 and 01.2.3.4 are rejected).
  IPv6 needs a digit and either 3+ groups or a 3+ digit group, so slices like `x[1::2]` and C++/Rust
  paths like `cafe::bad` are not addresses. Trade-off: `::1` is not found.
- CREDIT_CARD: 12-19 digits, contiguous or in 4-4-4[-x] / 4-6-4/5 groups with one consistent separator,
  an issuer prefix (IIN) of a real network valid for that length (`ISSUERS`), and the Luhn checksum.
  Short PANs (12-13 digits, Maestro) also need a card word nearby (`card`, `Karte`, `tarjeta`, ...) or
  to stand alone (no record-number word before, no other number right beside): 1 in 10 random numbers
  pass Luhn, and tables and ids are full of 12-digit numbers.
- US_SSN: AAA-GG-SSSS with a dash or space separator (area not 000/666/900-999, group not 00, serial
  not 0000). Trade-off: nine bare digits are not taken as an SSN (too many false positives: IDs, ZIPs).
- IBAN_CODE: country code + check digits in either case, the country's exact length (spaces only
  between groups of 4) and the mod-97 checksum.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from functools import lru_cache

from tasks.common.pii.guards import NONDIGIT, context_ok, merge_windows, near_word, negative_context

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

    return label in _PRIVATE_TLDS or bool(is_tld(label))


def emails(text: str) -> Iterator[tuple[int, int]]:
    ats = [m.start() for m in _AT.finditer(text)]
    for ws, we in merge_windows(ats, 65, 300, len(text)):
        for m in _EMAIL.finditer(text, ws, we):
            s, e = m.span()
            local = text[s : text.index("@", s)]
            if ".." in local or len(m.group(1)) > 253 or _EMAIL_TAIL.match(text, e):
                continue
            if _is_tld(m.group(2).lower()):
                yield s, e


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


def ipv4s(text: str, ws: int, we: int) -> Iterator[tuple[int, int]]:
    for m in _IPV4.finditer(text, ws, we):
        try:
            ipaddress.IPv4Address(m.group())
        except ValueError:
            continue
        if context_ok(text, m.start(), m.end()):
            yield m.start(), m.end()


def ipv6s(text: str) -> Iterator[tuple[int, int]]:
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
    r"(?<![\w.,+-])(?:\d{4}(?P<s>[ -])\d{4}(?P=s)\d{4}(?:(?P=s)\d{1,4}(?:(?P=s)\d{3})?)?"
    r"|\d{4}(?P<t>[ -])\d{6}(?P=t)\d{4,5}|\d{12,19})(?!\w|[.,-]\d)"
)
_LONG = tuple(range(16, 20))
_DINERS = tuple(range(14, 20))
# (lowest prefix, highest prefix, lengths, network): the IIN ranges of the card networks in use.
ISSUERS: tuple[tuple[str, str, tuple[int, ...], str], ...] = (
    ("4", "4", (13, 16, 19), "Visa"),
    ("51", "55", (16,), "Mastercard"),
    ("2221", "2720", (16,), "Mastercard"),
    ("2200", "2204", _LONG, "Mir"),
    ("34", "34", (15,), "American Express"),
    ("37", "37", (15,), "American Express"),
    ("300", "305", _DINERS, "Diners Club"),
    ("3095", "3095", _DINERS, "Diners Club"),
    ("36", "36", _DINERS, "Diners Club"),
    ("38", "39", _DINERS, "Diners Club"),
    ("35", "35", _LONG, "JCB"),  # 3528-3589 issued; generators and test sets use all of 35xx
    ("3088", "3094", _LONG, "JCB"),
    ("3096", "3102", _LONG, "JCB"),
    ("3112", "3120", _LONG, "JCB"),
    ("3158", "3159", _LONG, "JCB"),
    ("3337", "3349", _LONG, "JCB"),
    ("1800", "1800", (15,), "JCB"),
    ("2131", "2131", (15,), "JCB"),
    ("6011", "6011", _LONG, "Discover"),
    ("644", "649", _LONG, "Discover"),
    ("65", "65", _LONG, "Discover/RuPay"),
    ("62", "62", _LONG, "UnionPay"),
    ("81", "81", _LONG, "UnionPay/RuPay"),
    ("60", "60", _LONG, "RuPay"),
    ("82", "82", (16,), "RuPay"),
    ("353", "353", (16,), "RuPay"),
    ("356", "356", (16,), "RuPay"),
    ("9792", "9792", (16,), "Troy"),
    ("9804", "9804", (16,), "Prostir"),
    ("50", "50", tuple(range(12, 20)), "Maestro/Verve/Dankort"),
    ("56", "69", tuple(range(12, 20)), "Maestro/Laser/Solo/Verve"),
)
_CARD_WORDS = re.compile(
    r"card|credit|debit|visa|mastercard|maestro|amex|jcb|unionpay|diners|discover|rupay|\bmir\b|\bpan\b|"
    r"\bcc\b|karte|carte|tarjeta|cart[aã]o|carta|kaart|karta|kort|kortti|kártya|карт|カード|卡|카드|"
    r"kart|thẻ|บัตร|بطاقة|כרטיס",
    re.I,
)
_NUMBER_BESIDE = re.compile(r"\d")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_ok(digits: str) -> bool:
    """An issuer prefix valid for this length, and the Luhn checksum."""
    n = len(digits)
    if not 12 <= n <= 19 or len(set(digits)) == 1:
        return False
    if not any(lo <= digits[: len(lo)] <= hi and n in lengths for lo, hi, lengths, _ in ISSUERS):
        return False
    return luhn_ok(digits)


def _short_card_ok(text: str, s: int, e: int) -> bool:
    """A 12-13 digit PAN (not Visa): a card word nearby, or a number standing alone."""
    if near_word(_CARD_WORDS, text, s, e, 40, 0):
        return True
    if negative_context(text, s):
        return False
    return not near_word(_NUMBER_BESIDE, text, s, e, 8, 8)


def _part_of_longer_number(text: str, e: int, sep: str | None) -> bool:
    """A grouped match continued by another group ("3529 2014 3045 6129 7862 62": a parcel number)."""
    return sep is not None and text[e : e + 1] == sep and text[e + 1 : e + 2].isdigit()


def cards(text: str, ws: int, we: int) -> Iterator[tuple[int, int]]:
    for m in _CARD.finditer(text, ws, we):
        digits = NONDIGIT.sub("", m.group())
        s, e = m.span()
        if not card_ok(digits) or not context_ok(text, s, e):
            continue
        if _part_of_longer_number(text, e, m.group("s") or m.group("t")):
            continue
        if len(digits) <= 13 and digits[0] != "4":
            if not _short_card_ok(text, s, e):
                continue
        elif negative_context(text, s) and not near_word(_CARD_WORDS, text, s, e, 40, 0):
            continue  # "order 4111111111111111", "tracking 6011 ...": a record number
        yield s, e


# ---- US_SSN ----------------------------------------------------------------------------------------
_SSN = re.compile(r"(?<![\w.,+-])(\d{3})([- ])(\d{2})\2(\d{4})(?!\w|[.,-]\d)")


def ssn_ok(area: str, group: str, serial: str) -> bool:
    a = int(area)
    return a != 0 and a != 666 and a < 900 and group != "00" and serial != "0000"


def ssns(text: str, ws: int, we: int) -> Iterator[tuple[int, int]]:
    for m in _SSN.finditer(text, ws, we):
        if ssn_ok(m.group(1), m.group(3), m.group(4)) and context_ok(text, m.start(), m.end()):
            yield m.start(), m.end()


# ---- IBAN_CODE -------------------------------------------------------------------------------------
IBAN_LENGTHS: dict[str, int] = {
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
_IBAN_START = re.compile(r"([A-Za-z][A-Za-z])\d\d(?=[A-Za-z0-9]| [A-Za-z0-9])")


def iban_ok(compact: str) -> bool:
    compact = compact.upper()
    if IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact.isalnum():
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
        elif c.isascii() and c.isalnum():
            n += 1
            i += 1
        else:
            break
    if n < length or text[i - 1] == " " or (i < size and text[i].isalnum()):
        return None  # too short, or longer than the country's IBAN ("... 00 THEN" stops at 00)
    return i


def ibans(text: str, ws: int, we: int) -> Iterator[tuple[int, int]]:
    pos = ws
    while m := _IBAN_START.search(text, pos, we):
        pos = m.end()
        if m.start() and text[m.start() - 1].isalnum():
            continue
        length = IBAN_LENGTHS.get(m.group(1).upper())
        end = _iban_end(text, m.start(), length) if length else None
        if end is None:
            continue
        raw = text[m.start() : end]
        if " " in raw and any(len(g) != 4 for g in raw.split(" ")[:-1]):
            continue
        if iban_ok(raw.replace(" ", "")):
            yield m.start(), end
            pos = end
