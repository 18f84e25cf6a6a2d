"""PII bench: per-type recall and precision on labelled multi-locale text, and MB/s, for lmforge's
scrubber, a regex-only baseline and the peers a user would pick instead (Microsoft Presidio's pattern
recognizers, scrubadub), side by side.

Two labelled sets, both seeded:
- `locales`: short sentences across LOCALES, each with one value from `Faker`'s provider for that
  locale (phone numbers in the locale's formats, e-mails, IPv4/IPv6, IBANs of the locale's country,
  written compact, grouped or in lower case, card numbers of every network the locale's Faker
  provider knows (Visa 13/16/19, Mastercard, Amex, Discover, Diners, JCB 15/16, Maestro 12; Mir and
  UnionPay in ru_RU, ...), contiguous or grouped, US SSNs), half of them with a context word
  ("Tel.", "card"), half without; plus half as many
  look-alike sentences that hold no PII: version strings, dates and times, order and tracking
  numbers, ISBNs, hex ids and UUIDs, coordinates, numbers in code and tables, money, postcodes,
  timestamps, Luhn-invalid cards, IBANs with a bad checksum, impossible IPs and SSNs.
- `docstrings`: real docstrings (the pydocs source) with planted PII of every type and look-alikes
  (three numbers per 700 bytes: far denser than a real corpus).
Throughput is measured on both and on the stdlib's docstrings as they are (`pydocs-as-is`, nothing
planted: the text a pretraining corpus holds, and the 10 MB/s target), median of 3, alternating with
the regex-only baseline.

A hit is a span of the same type overlapping a gold span; every other span is a false positive of the
type it claims. Presidio runs with no downloaded model: its analyzer over a blank spaCy pipeline (the
pattern recognizers need only tokens), every predefined recognizer of the six types, default
thresholds. scrubadub (2.0) has no IBAN or IP detector: those rows are recall 0 for it.

Needs the `bench` extra (`pip install -e '.[bench]'`): Faker, presidio-analyzer, scrubadub.
Command: `make bench BENCH=pii` (or `.venv/bin/python -m bench.run pii --no-mlflow`).
"""

from __future__ import annotations

import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import measure_pair, row, save
from conf.collect import PydocsSource
from conf.scrub import ENTITY_TYPES
from tasks.collect import SourceStats, pydocs_documents
from tasks.common.pii.entities import IBAN_LENGTHS
from tasks.scrub.detect import Scrubber, luhn_ok

SEED = 7
Gold = set[tuple[str, int, int]]
Found = list[tuple[str, int, int]]

# Faker locales with a phone provider, across the regions of MAJOR_PHONE_REGIONS and beyond.
LOCALES = (
    "en_US", "en_GB", "en_CA", "en_AU", "en_NZ", "en_IE", "en_IN", "de_DE", "de_AT", "de_CH", "fr_FR",
    "fr_CH", "it_IT", "es_ES", "es_MX", "es_AR", "es_CO", "pt_BR", "pt_PT", "nl_NL", "nl_BE", "pl_PL",
    "cs_CZ", "sk_SK", "hu_HU", "ro_RO", "bg_BG", "hr_HR", "el_GR", "sv_SE", "da_DK", "no_NO", "fi_FI",
    "ru_RU", "uk_UA", "tr_TR", "he_IL", "ja_JP", "zh_CN", "zh_TW", "ko_KR", "id_ID", "th_TH", "vi_VN",
    "hi_IN", "lt_LT", "lv_LV",
)  # fmt: skip
CONTEXT_TEMPLATES = {
    "PHONE_NUMBER": ["Call me at {v}.", "Tel.: {v}", "{name}'s mobile number is {v}.", "Fax {v} (office)"],
    "EMAIL_ADDRESS": ["Write to {v} for details.", "E-mail: {v}"],
    "IP_ADDRESS": ["The host at {v} refused the connection.", "Client IP: {v}"],
    "CREDIT_CARD": ["Card number {v}, exp 04/29.", "Paid with credit card {v}."],
    "US_SSN": ["SSN: {v}", "Her social security number is {v}."],
    "IBAN_CODE": ["IBAN: {v}", "Please transfer to account {v} by Friday."],
}
PLAIN_TEMPLATES = ["{name}: {v}", "{v} ({name})", "Details for {name} - {v} - were updated.",
                   "{name} gave {v} yesterday."]  # fmt: skip


def _faker(locale: str) -> Any:
    from faker import Faker

    fake = Faker(locale)
    fake.seed_instance(SEED)
    return fake


def _group(value: str, rng: random.Random, sep: str | None = None) -> str:
    sep = sep if sep is not None else rng.choice([" ", "-"])
    return sep.join(value[i : i + 4] for i in range(0, len(value), 4))


def _card(fake: Any, rng: random.Random) -> str:
    provider = next(p for p in fake.get_providers() if hasattr(p, "credit_card_types"))
    number = "0604"
    while number.startswith("0604"):  # Faker's Maestro list has 0604, which no network issues
        number = fake.credit_card_number(card_type=rng.choice(sorted(provider.credit_card_types)))
    return _group(number, rng) if rng.random() < 0.4 else number


def _iban(fake: Any, rng: random.Random) -> str:
    iban = fake.iban()
    style = rng.random()
    return _group(iban, rng, " ") if style < 0.3 else iban.lower() if style < 0.5 else iban


def _value(kind: str, fake: Any, us: Any, rng: random.Random) -> str:
    if kind == "PHONE_NUMBER":
        return str(fake.phone_number())
    if kind == "EMAIL_ADDRESS":
        return str(fake.email())
    if kind == "IP_ADDRESS":
        return str(fake.ipv4() if rng.random() < 0.7 else fake.ipv6())
    if kind == "CREDIT_CARD":
        return _card(fake, rng)
    if kind == "US_SSN":
        return str(us.ssn())
    return _iban(fake, rng)


def _has_iban(fake: Any) -> bool:
    """The locale's bank provider makes IBANs of a country that has them (th_TH's are made up)."""
    try:
        iban = str(fake.iban())
    except AttributeError:
        return False
    return IBAN_LENGTHS.get(iban[:2]) == len(iban)  # some locales make GB IBANs one character short


def locale_positives(per_locale: int = 36) -> tuple[list[str], list[Gold], Counter[str]]:
    """Labelled sentences with one PII value each, `per_locale` per locale; the phone and SSN shares are
    higher than the others' (phones are the hardest type; SSNs only exist in en_US)."""
    rng = random.Random(SEED)
    us = _faker("en_US")
    kinds = ["PHONE_NUMBER"] * 3 + ["EMAIL_ADDRESS", "IP_ADDRESS", "CREDIT_CARD", "IBAN_CODE"]
    texts: list[str] = []
    labels: list[Gold] = []
    by_locale: Counter[str] = Counter()
    for locale in LOCALES:
        fake = _faker(locale)
        has_iban = _has_iban(fake)
        for i in range(per_locale):
            kind = rng.choice(kinds) if i % 9 else "US_SSN"
            if kind == "IBAN_CODE" and not has_iban:
                kind = "PHONE_NUMBER"
            value = _value(kind, fake, us, rng)
            templates = CONTEXT_TEMPLATES[kind] if i % 2 else PLAIN_TEMPLATES
            template = rng.choice(templates)
            text = template.format(name=fake.name(), v=value)
            start = text.index(value)
            texts.append(text)
            labels.append({(kind, start, start + len(value))})
            by_locale[kind] += 1
    return texts, labels, by_locale


def _luhn_number(rng: random.Random, prefix: str, length: int, valid: bool = True) -> str:
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    for check in "0123456789":
        if luhn_ok(body + check) == valid:
            return body + check
    raise AssertionError


def _digits(rng: random.Random, n: int) -> str:
    return str(rng.randint(1, 9)) + "".join(rng.choice("0123456789") for _ in range(n - 1))


def _bad_iban(fake: Any) -> str:
    iban = str(fake.iban()) if _has_iban(fake) else "DE89370400440532013000"
    i = max(k for k, c in enumerate(iban) if c.isdigit())
    return iban[:i] + str((int(iban[i]) + 1) % 10) + iban[i + 1 :]  # one digit off: the checksum fails


def lookalike_sentences(n: int) -> list[str]:
    """Sentences with numbers that are not PII (each kind equally often), in several locales."""
    rng = random.Random(SEED + 1)
    r = rng.randint

    def d(n: int) -> str:
        return _digits(rng, n)

    def dotted(lo: int, hi: int, k: int = 4) -> str:
        return ".".join(str(r(lo, hi)) for _ in range(k))

    fakes = [_faker(loc) for loc in ("en_US", "de_DE", "fr_FR", "ja_JP", "pt_BR", "en_GB")]
    bad_card_prefixes = ["4", "51", "37", "6011"]
    makers: list[Callable[[Any], str]] = [
        lambda f: f"Upgrade to version {r(1, 12)}.{r(0, 30)}.{r(0, 99)}.{r(0, 9999)} now.",
        lambda f: f"pip install numpy=={r(1, 2)}.{r(0, 30)}.{r(0, 9)} torch>=2.{r(0, 9)}.{r(0, 9)}",
        lambda f: f"The meeting is on {f.date()} at {f.time()}.",
        lambda f: f"Logged at {f.date_time().isoformat(sep=' ')} UTC",
        lambda f: f"Released {f.date(pattern='%d.%m.%Y')}, patched {f.date(pattern='%m/%d/%Y %H:%M')}.",
        lambda f: f"Order #{d(r(8, 12))} has shipped.",
        lambda f: f"Order no. {d(3)}-{d(7)} was cancelled.",
        lambda f: f"Tracking number: 1Z{r(100, 999)}AA1{d(10)}",
        lambda f: f"Your parcel {d(4)} {d(4)} {d(4)} {d(4)} {d(4)} {d(2)} is on its way.",
        lambda f: f"Invoice INV-{r(2015, 2025)}-{d(6)} is due.",
        lambda f: f"ISBN {f.isbn13()} and ISBN-10 {f.isbn10()}",
        lambda f: f"See {f.isbn13().replace('-', '')} in the catalogue.",
        lambda f: f"commit {rng.getrandbits(160):040x} fixed it",
        lambda f: f"request id {uuid.UUID(int=rng.getrandbits(128))}",
        lambda f: f"pointer 0x{rng.getrandbits(48):012x}, object {rng.getrandbits(64):016x}",
        lambda f: f"We met at {f.latitude()}, {f.longitude()}.",
        lambda f: f"GPS: {float(f.latitude()):.6f} {float(f.longitude()):.6f}",
        lambda f: f"x = {rng.choice([2147483647, 4294967295, 65535, 1000000007, 998244353])}; y = {d(7)}",
        lambda f: f"timeout = {d(r(7, 10))}  # ms",
        lambda f: f"arr = [{', '.join(d(r(4, 8)) for _ in range(5))}]",
        lambda f: f"| {r(2000, 2024)} | {d(3)} {d(3)}.{r(10, 99)} | {d(7)} |",
        lambda f: f"{d(5)}  {d(5)}  {d(5)}  {d(5)}",
        lambda f: f"Population: {r(1, 999)} {r(100, 999)} {r(100, 999)} inhabitants",
        lambda f: f"Revenue rose to ${r(1, 999)},{r(100, 999)},{r(100, 999)} in {r(2000, 2024)}.",
        lambda f: f"Preis: {r(1, 999)}.{r(100, 999)},{r(10, 99)} EUR",
        lambda f: f"Postcode {f.postcode()}, {f.city()}",
        lambda f: f"created_at={r(1_500_000_000, 1_800_000_000)} updated={d(13)}",
        lambda f: f"Card {_luhn_number(rng, rng.choice(bad_card_prefixes), 16, valid=False)} was declined.",
        lambda f: f"IBAN {_bad_iban(f)}",
        lambda f: f"route {r(256, 999)}.{dotted(0, 255, 3)}",
        lambda f: f"SSN {rng.choice(['000', '666', '9' + d(2)])}-{r(10, 99)}-{r(1000, 9999)}",
        lambda f: f"Section {dotted(1, 20)} covers it.",
        lambda f: f"between {r(1990, 2010)}-{r(2011, 2024)} the rate was {rng.random():.4f}",
        lambda f: f"Serial no. {d(10)}, part {d(5)}-{d(5)}",
        lambda f: f"ran {r(1, 9)}.{r(0, 9)}e{r(6, 12)} steps in {r(10, 99)}:{r(10, 59)}:{r(10, 59)}",
    ]
    return [makers[i % len(makers)](fakes[(i // len(makers)) % len(fakes)]) for i in range(n)]


def build_locales(per_locale: int = 36) -> tuple[list[str], list[Gold], dict[str, Any]]:
    pos, labels, kinds = locale_positives(per_locale)
    neg = lookalike_sentences(len(pos) // 2)
    return pos + neg, labels + [set() for _ in neg], {"positives": dict(kinds), "lookalikes": len(neg)}


def build_docstrings(n_docs: int = 400) -> tuple[list[str], list[Gold]]:
    """Docstrings with two planted PII values each (labelled spans) and one look-alike."""
    rng = random.Random(SEED)
    base = [d.text for d in pydocs_documents(PydocsSource(max_docs=n_docs), SourceStats())][:n_docs]
    pos, pos_labels, _ = locale_positives(6)
    values = [
        (next(iter(g))[0], t[next(iter(g))[1] : next(iter(g))[2]])
        for t, g in zip(pos, pos_labels, strict=True)
    ]
    negatives = lookalike_sentences(len(base))
    texts, labels = [], []
    for i, text in enumerate(base):
        gold: Gold = set()
        pieces = [text]
        for kind, value in rng.sample(values, 2):
            start = sum(map(len, pieces)) + len(" contact ")
            pieces.append(f" contact {value} today.")
            gold.add((kind, start, start + len(value)))
        pieces.append(f" {negatives[i]}")
        texts.append("".join(pieces))
        labels.append(gold)
    return texts, labels


# ---- the systems ------------------------------------------------------------------------------------
# The regexes a quick scrubber would use (Presidio-style patterns without their validators).
BASELINE = {
    "EMAIL_ADDRESS": re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b"),
    "CREDIT_CARD": re.compile(r"\b(?:\d[ -]?){13,19}\b"),
    "US_SSN": re.compile(r"\b\d{3}-\d{2}-\d{4}\b"),
    "IP_ADDRESS": re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b|\b(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}\b"),
    "IBAN_CODE": re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b"),
    "PHONE_NUMBER": re.compile(r"(?:\+\d{1,3}[ .-]?)?\(?\d{2,4}\)?[ .-]?\d{3,4}[ .-]?\d{3,4}\b"),
}


def baseline_find(text: str) -> Found:
    return [(t, m.start(), m.end()) for t, rx in BASELINE.items() for m in rx.finditer(text)]


def presidio_finder() -> Callable[[str], Found] | str:
    """Presidio's AnalyzerEngine without a downloaded model: a blank spaCy pipeline gives the tokens
    its context enhancer reads; the recognizers of our six types are Presidio's predefined ones."""
    try:
        import spacy
        import tldextract
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.nlp_engine.slim_spacy_nlp_engine import SlimSpacyNlpEngine
    except ImportError as e:
        return f"not installed ({e.name}): pip install -e '.[bench]'"

    class BlankSpacy(SlimSpacyNlpEngine):  # type: ignore[misc]
        def load(self) -> None:
            self.nlp = {"en": spacy.blank("en")}

    # its e-mail recognizer would fetch the public suffix list over the network: use the bundled copy
    tldextract.extract = tldextract.TLDExtract(suffix_list_urls=())
    engine = BlankSpacy(models=[{"lang_code": "en", "model_name": "blank"}], auto_download=False)
    engine.load()
    registry = RecognizerRegistry()
    registry.load_predefined_recognizers(nlp_engine=engine, languages=["en"])
    analyzer = AnalyzerEngine(nlp_engine=engine, registry=registry, supported_languages=["en"])
    entities = list(ENTITY_TYPES)

    def find(text: str) -> Found:
        return [
            (r.entity_type, r.start, r.end) for r in analyzer.analyze(text, language="en", entities=entities)
        ]

    return find


SCRUBADUB_TYPES = {
    "email": "EMAIL_ADDRESS",
    "phone": "PHONE_NUMBER",
    "credit_card": "CREDIT_CARD",
    "social_security_number": "US_SSN",
}


def scrubadub_finder() -> Callable[[str], Found] | str:
    """scrubadub's default detectors (en_US), its filth types mapped to ours; others are ignored."""
    try:
        import scrubadub
    except ImportError as e:
        return f"not installed ({e.name}): pip install -e '.[bench]'"
    scrubber = scrubadub.Scrubber(locale="en_US")

    def find(text: str) -> Found:
        return [
            (SCRUBADUB_TYPES[f.type], f.beg, f.end)
            for f in scrubber.iter_filth(text)
            if f.type in SCRUBADUB_TYPES
        ]

    return find


# ---- scoring ----------------------------------------------------------------------------------------
def score(found: list[Found], labels: list[Gold]) -> dict[str, dict[str, float | int]]:
    """Per type and overall: tp, fp, fn, precision, recall. A hit overlaps a gold span of its type."""
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for spans, gold in zip(found, labels, strict=True):
        matched: set[tuple[str, int, int]] = set()
        for t, s, e in spans:
            g = next((g for g in gold if g[0] == t and g[1] < e and s < g[2]), None)
            if g is None:
                fp[t] += 1
            elif g not in matched:
                matched.add(g)
                tp[t] += 1
        for g in gold - matched:
            fn[g[0]] += 1
    out: dict[str, dict[str, float | int]] = {}
    for t in (*ENTITY_TYPES, "overall"):
        a, b, c = (sum(x.values()) for x in (tp, fp, fn)) if t == "overall" else (tp[t], fp[t], fn[t])
        out[t] = {
            "tp": a,
            "fp": b,
            "fn": c,
            "precision": round(a / (a + b), 4) if a + b else 1.0,
            "recall": round(a / (a + c), 4) if a + c else 1.0,
        }
    return out


def _timed(fn: Callable[[str], Found], texts: list[str]) -> tuple[list[Found], float]:
    t0 = time.perf_counter()
    found = [fn(t) for t in texts]
    return found, time.perf_counter() - t0


def quality_rows(
    texts: list[str], labels: list[Gold], systems: dict[str, Callable[[str], Found] | str]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One row per (system, type) with recall/precision, and each system's MB/s on these texts."""
    mb = sum(len(t.encode()) for t in texts) / 1e6
    rows, speed = [], {}
    for name, fn in systems.items():
        if isinstance(fn, str):
            speed[name] = fn
            continue
        found, seconds = _timed(fn, texts)
        speed[name] = round(mb / seconds, 3)
        for t, q in score(found, labels).items():
            rows.append({"bench": f"pii/locales/{t}", "system": name, **q})
    return rows, speed


def main() -> Path:
    scrubber = Scrubber()

    def ours(text: str) -> Found:
        return [(s.type, s.start, s.end) for s in scrubber.find(text)]

    # throughput (and quality) on docstrings: ours vs regex-only, alternating, median of 3
    doc_texts, doc_labels = build_docstrings()
    mb = sum(len(t.encode()) for t in doc_texts) / 1e6
    a, b, (found_ours, found_base) = measure_pair(
        lambda: [ours(t) for t in doc_texts],
        lambda: [baseline_find(t) for t in doc_texts],
        mb,
        "MB",
        runs=3,
        names=("lmforge", "regex-only"),
    )
    q_ours, q_base = score(found_ours, doc_labels)["overall"], score(found_base, doc_labels)["overall"]
    rows = [
        row(
            "pii/docstrings",
            a,
            b,
            precision=q_ours["precision"],
            recall=q_ours["recall"],
            baseline_precision=q_base["precision"],
            baseline_recall=q_base["recall"],
        )
    ]
    # throughput on the corpus as it is (the stdlib's docstrings, nothing planted): the 10 MB/s target
    plain = [d.text for d in pydocs_documents(PydocsSource(max_docs=3000), SourceStats())]
    plain_mb = sum(len(t.encode()) for t in plain) / 1e6
    pa, pb, (plain_ours, _) = measure_pair(
        lambda: [ours(t) for t in plain],
        lambda: [baseline_find(t) for t in plain],
        plain_mb,
        "MB",
        runs=3,
        names=("lmforge", "regex-only"),
    )
    rows.append(row("pii/pydocs-as-is", pa, pb, spans_found=sum(map(len, plain_ours))))
    # per-type quality across locales, every system side by side
    texts, labels, counts = build_locales()
    systems: dict[str, Callable[[str], Found] | str] = {
        "lmforge": ours,
        "regex-only": baseline_find,
        "presidio": presidio_finder(),
        "scrubadub": scrubadub_finder(),
    }
    qrows, speed = quality_rows(texts, labels, systems)
    details = {
        "docstrings": {"documents": len(doc_texts), "megabytes": round(mb, 3)},
        "pydocs_as_is": {"documents": len(plain), "megabytes": round(plain_mb, 3)},
        "locales": {"locales": list(LOCALES), "sentences": len(texts), **counts},
        "locales_mb_per_s": speed,
    }
    return save("pii", rows + qrows, details)


if __name__ == "__main__":
    main()
