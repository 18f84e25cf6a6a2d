"""PII bench: MB/s and precision/recall of lmforge's validated detectors against a regex-only baseline,
on a labelled set built here: real docstrings with planted PII of every type and planted look-alikes
(version strings, dates, hex hashes, ISBNs, Luhn-invalid numbers, bad IBANs, impossible IPs and SSNs).
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from bench.common import measure_pair, row, save
from conf.collect import PydocsSource
from tasks.collect import SourceStats, pydocs_documents
from tasks.scrub.detect import Scrubber, luhn_ok

SEED = 7

# The regexes a quick scrubber would use (Presidio-style patterns without their validators).
BASELINE = {
    "EMAIL_ADDRESS": re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b"),
    "CREDIT_CARD": re.compile(r"\b(?:\d[ -]?){13,19}\b"),
    "US_SSN": re.compile(r"\b\d{3}-\d{2}-\d{4}\b"),
    "IP_ADDRESS": re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b|\b(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}\b"),
    "IBAN_CODE": re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b"),
    "PHONE_NUMBER": re.compile(r"(?:\+\d{1,3}[ .-]?)?\(?\d{2,4}\)?[ .-]?\d{3,4}[ .-]?\d{3,4}\b"),
}


def baseline_find(text: str) -> list[tuple[str, int, int]]:
    return [(t, m.start(), m.end()) for t, rx in BASELINE.items() for m in rx.finditer(text)]


def _luhn_number(rng: random.Random, prefix: str, length: int) -> str:
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    for check in "0123456789":
        if luhn_ok(body + check):
            return body + check
    raise AssertionError


def _iban(rng: random.Random) -> str:
    bban = "".join(rng.choice("0123456789") for _ in range(18))  # DE: 8-digit bank code + 10-digit account
    rearranged = bban + "DE00"
    digits = "".join(str(int(c, 36)) for c in rearranged)
    check = 98 - int(digits) % 97
    iban = f"DE{check:02d}{bban}"
    return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))


def positives(rng: random.Random) -> list[tuple[str, str]]:
    first = rng.choice(["alice", "bob", "carol", "dmitri", "eve"])
    return [
        ("EMAIL_ADDRESS", f"{first}.{rng.randint(1, 999)}@example.org"),
        (
            "PHONE_NUMBER",
            rng.choice(["+1 415 555 0132", "+44 20 7946 0958", "+33 1 42 68 53 00", "(212) 555-0187"]),
        ),
        (
            "IP_ADDRESS",
            f"{rng.randint(11, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
        ),
        ("IP_ADDRESS", "2001:db8:85a3:0:0:8a2e:370:" + f"{rng.randint(4096, 65535):x}"),
        ("CREDIT_CARD", _luhn_number(rng, rng.choice(["4", "51", "37"]), 16)),
        ("US_SSN", f"{rng.randint(1, 665):03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"),
        ("IBAN_CODE", _iban(rng)),
    ]


def lookalikes(rng: random.Random) -> list[str]:
    bad_card = _luhn_number(rng, "4", 16)
    bad_card = bad_card[:-1] + str((int(bad_card[-1]) + 1) % 10)
    return [
        f"version 1.{rng.randint(0, 9)}.{rng.randint(0, 9)}.{rng.randint(0, 99)}",
        f"released on 2023-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        f"commit {rng.getrandbits(160):040x}",
        "ISBN 978-0-306-40615-7",
        bad_card,
        "DE89 3704 0044 0532 0130 01",  # checksum off by one digit
        "999.1.1.1",
        "000-12-3456",
        f"timeout={rng.randint(1000, 99999)}",
    ]


def build_corpus(n_docs: int = 400) -> tuple[list[str], list[set[tuple[str, int, int]]]]:
    """Docstrings with planted PII (labelled spans) and look-alikes (which must not be found)."""
    rng = random.Random(SEED)
    base = [d.text for d in pydocs_documents(PydocsSource(max_docs=n_docs), SourceStats())][:n_docs]
    texts, labels = [], []
    for text in base:
        gold: set[tuple[str, int, int]] = set()
        pieces = [text]
        for kind, value in rng.sample(positives(rng), 2):
            start = sum(map(len, pieces)) + 1
            pieces.append(f" contact {value} today.")
            start += len(" contact")
            gold.add((kind, start, start + len(value)))
        pieces.append(f" See {rng.choice(lookalikes(rng))} for details.")
        texts.append("".join(pieces))
        labels.append(gold)
    return texts, labels


def score(
    found: list[list[tuple[str, int, int]]], labels: list[set[tuple[str, int, int]]]
) -> dict[str, float]:
    """Span-level precision/recall: a hit must overlap a gold span of the same type."""
    tp = fp = fn = 0
    for spans, gold in zip(found, labels, strict=True):
        matched = set()
        for t, s, e in spans:
            g = next((g for g in gold if g[0] == t and g[1] < e and s < g[2]), None)
            if g is None:
                fp += 1
            else:
                matched.add(g)
        tp += len(matched)
        fn += len(gold - matched)
    return {"precision": round(tp / max(tp + fp, 1), 4), "recall": round(tp / max(tp + fn, 1), 4)}


def main() -> Path:
    texts, labels = build_corpus()
    scrubber = Scrubber()
    mb = sum(len(t.encode()) for t in texts) / 1e6

    def ours():
        return [[(s.type, s.start, s.end) for s in scrubber.find(t)] for t in texts]

    def baseline():
        return [baseline_find(t) for t in texts]

    a, b, (found_ours, found_base) = measure_pair(
        ours, baseline, mb, "MB", runs=3, names=("lmforge", "regex-only")
    )
    q_ours, q_base = score(found_ours, labels), score(found_base, labels)
    rows = [
        row(
            "pii",
            a,
            b,
            precision=q_ours["precision"],
            recall=q_ours["recall"],
            baseline_precision=q_base["precision"],
            baseline_recall=q_base["recall"],
        )
    ]
    return save(
        "pii", rows, {"documents": len(texts), "megabytes": mb, "planted_spans": sum(map(len, labels))}
    )


if __name__ == "__main__":
    main()
