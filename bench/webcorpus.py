"""A seeded, generated web-like corpus: what `bench_scale` and the scale tests feed the data stages.

Web pages, not docstrings: articles of Zipf-distributed pseudo-words in sentences and paragraphs, with
navigation and cookie boilerplate, bullet lists, tables of numbers, spam that repeats lines and phrases,
short stubs, hashtag lists, a blocklisted word now and then, contact lines with e-mail addresses and
phone numbers (PII for `scrub`), and ~10% near duplicates (an earlier page with a few words changed)
plus a few exact copies. The same `(n_docs, seed)` always gives the same records, so outputs can be
compared by hash across implementations and engines.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_SYLLABLES = [a + b for a in "bcdfghjklmnprstvwz" for b in ("a", "e", "i", "o", "u", "ai", "ou", "ea")]
# the most frequent words of English first, so word pairs repeat as in real prose
_FUNCTION_WORDS = (
    "the of and to a in is that for it as was with be by on not he this are or his from at which but "
    "have an they you were her she there one all we their been has when who will more no if out so "
    "said what up its about into than them can only other new some could time these two may then do "
    "first any my now such like our over man me even most made after also did many before must"
).split()
_NAV = [
    "Home | About | Contact | Privacy Policy | Terms of Use",
    "Skip to main content",
    "Share this article on Facebook Twitter LinkedIn",
    "We use cookies to improve your experience. Accept all cookies",
    "Subscribe to our newsletter for the latest updates",
    "Copyright 2024 All rights reserved.",
]


class WebCorpus:
    """`records()` yields `{id, text, source}` dicts; `write(path)` writes them as JSONL."""

    def __init__(self, n_docs: int, seed: int = 0, vocab_size: int = 30_000):
        self.n_docs = n_docs
        self.seed = seed
        rng = random.Random(seed)
        words: set[str] = set()
        while len(words) < vocab_size:
            words.add("".join(rng.choices(_SYLLABLES, k=rng.choice((1, 2, 2, 3, 3, 4)))))
        self.vocab = sorted(words - set(_FUNCTION_WORDS))
        rng.shuffle(self.vocab)
        self.vocab = _FUNCTION_WORDS + self.vocab
        self.cum = list(itertools.accumulate(1 / (i + 2) for i in range(len(self.vocab))))

    def _words(self, rng: random.Random, k: int) -> list[str]:
        return rng.choices(self.vocab, cum_weights=self.cum, k=k)

    def _sentence(self, rng: random.Random) -> str:
        ws = self._words(rng, rng.randint(6, 24))
        if rng.random() < 0.3:
            ws.insert(rng.randrange(len(ws)), rng.choice(("1998", "42", "3.5", "2021", "100")))
        if rng.random() < 0.2:
            ws[rng.randrange(len(ws))] += ","
        return " ".join(ws).capitalize() + rng.choice((".", ".", ".", "?", "!"))

    def _paragraph(self, rng: random.Random) -> str:
        return " ".join(self._sentence(rng) for _ in range(rng.randint(2, 7)))

    def _contact(self, rng: random.Random) -> str:
        name = rng.choice(self.vocab[:2000])
        host = rng.choice(self.vocab[:2000])
        phone = f"({rng.randint(201, 989)}) {rng.randint(200, 999)}-{rng.randint(0, 9999):04d}"
        return f"Contact {name}.{rng.choice(self.vocab[:500])}@{host}.com or call {phone} for details."

    def _article(self, rng: random.Random) -> str:
        parts = [" ".join(self._words(rng, rng.randint(3, 9))).title()]
        if rng.random() < 0.4:
            parts.insert(0, rng.choice(_NAV))
        parts += [self._paragraph(rng) for _ in range(rng.randint(2, 8))]
        if rng.random() < 0.3:
            parts.append("\n".join(f"- {' '.join(self._words(rng, rng.randint(3, 8)))}" for _ in range(4)))
        if rng.random() < 0.15:
            parts.append(self._contact(rng))
        if rng.random() < 0.3:  # typographic quotes, accents, symbols: non-ASCII text
            i = rng.randrange(1, len(parts))
            parts[i] = f"“{parts[i]}” — {rng.choice(('café', 'naïve', 'Zürich', 'São Paulo', '€5', '½ cup'))}"
        if rng.random() < 0.3:
            parts.append(rng.choice(_NAV))
        return "\n\n".join(parts)

    def _odd(self, rng: random.Random) -> str:
        """A page the quality filters should drop."""
        kind = rng.randrange(10)
        if kind == 0:
            return " ".join(self._words(rng, rng.randint(2, 8)))  # a stub
        if kind == 1:
            return "\n".join(f"* {' '.join(self._words(rng, 4))}" for _ in range(rng.randint(10, 30)))
        if kind == 2:
            line = " ".join(self._words(rng, 6)).capitalize()
            return "\n".join([line] * rng.randint(5, 12) + [self._paragraph(rng)])  # spam lines
        if kind == 3:
            phrase = " ".join(self._words(rng, 3))
            return f"{self._paragraph(rng)} " + " ".join([phrase] * rng.randint(15, 40))  # spam phrase
        if kind == 4:
            return "\n".join(
                " ".join(str(rng.randint(0, 99999)) for _ in range(8)) for _ in range(rng.randint(10, 40))
            )
        if kind == 5:
            return " ".join(f"#{w}" for w in self._words(rng, rng.randint(20, 60)))
        if kind == 6:
            return "\n".join(f"{self._sentence(rng)[:-1]} ..." for _ in range(rng.randint(5, 15)))
        if kind == 7:  # a pasted-twice page: long repeated n-grams, no repeated line
            para = self._paragraph(rng) + " " + self._paragraph(rng)
            return f"{para}\n\n{self._sentence(rng)}\n\n{para} {self._sentence(rng)}"
        if kind == 8:  # markup residue: few words with letters
            junk = ("-->", "===", "|", "{}", "&&", "0x1f", "::", "</>", "++", "1.2.3")
            return " ".join(rng.choice(junk) if rng.random() < 0.7 else w for w in self._words(rng, 80))
        return self._article(rng).replace(".", " porn.", 1)  # a blocklisted word

    @staticmethod
    def _near_copy(rng: random.Random, text: str, vocab: list[str]) -> str:
        words = text.split(" ")
        for _ in range(max(1, len(words) // rng.randint(60, 200))):
            words[rng.randrange(len(words))] = rng.choice(vocab)
        return " ".join(words)

    def records(self) -> Iterator[dict[str, Any]]:
        rng = random.Random(self.seed + 1)
        recent: list[str] = []  # pages a near duplicate may copy (a bounded window: memory stays flat)
        for i in range(self.n_docs):
            roll = rng.random()
            if roll < 0.10 and recent:
                text = self._near_copy(rng, rng.choice(recent), self.vocab)
            elif roll < 0.11 and recent:
                text = rng.choice(recent)  # an exact copy
            elif roll < 0.25:
                text = self._odd(rng)
            else:
                text = self._article(rng)
                if len(recent) < 2000:
                    recent.append(text)
                else:
                    recent[rng.randrange(len(recent))] = text
            yield {"id": f"web-{self.seed}-{i:07d}", "text": text, "source": "web"}

    def write(self, path: Path) -> int:
        """Write the records as JSONL (atomically: a temp name renamed at the end); bytes written."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        size = 0
        with open(tmp, "w", encoding="utf-8") as fh:
            for rec in self.records():
                line = json.dumps(rec, ensure_ascii=False) + "\n"
                size += len(line.encode("utf-8"))
                fh.write(line)
        tmp.replace(path)
        return size
