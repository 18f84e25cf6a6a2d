"""Masking for everything a stage before `scrub` logs or writes besides its document shards.

Raw PII must not leave the stages that hold the documents (collect, filter, dedup): their samples
(filter's dropped documents, dedup's duplicate pairs), reject lists, reports, MLflow artifacts and log
lines go through `mask_text`, and document ids through `mask_id`, before they are written. The
scrubber here uses the default `scrub` settings (every type, every major region): stages before
`scrub` do not see the pipeline's `scrub` section, and over-masking a sample costs nothing.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from typing import Any

from tasks.common.pii.scrubber import Scrubber, Span, redact, resolve

# Characters that separate the parts of an id ("files:corpus/alice@example.com.txt#2"): read as spaces,
# so a path component is scanned like a word in prose (same length, so offsets stay valid).
_SPARE = 256  # longer than any PII value
# Characters that separate the parts of an id or path ("files:corpus/alice@example.com.txt#2"), and a
# file extension: read as spaces, so a part is scanned like a word in prose (same length: offsets hold).
_ID_SEPARATORS = re.compile(r"[/\\:#_=&?,;|]")
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,5}$")


@lru_cache(maxsize=1)
def default_scrubber() -> Scrubber:
    return Scrubber()


def mask_text(text: str) -> str:
    """`text` with any PII replaced by `<TYPE>`."""
    return redact(text, default_scrubber().find(text)) if text else text


def mask_sample(text: str, chars: int) -> str:
    """The first `chars` characters of `text`, masked. Masked before it is cut (with room to spare), so a
    value cut in half at the end is still recognised and replaced, never shown in part."""
    return mask_text(text[: chars + _SPARE])[:chars]


def _blank(m: re.Match[str]) -> str:
    return " " * len(m.group())


def name_spans(name: str) -> list[Span]:
    """PII in an id, a path or a short field: the name as it is, with its separators read as spaces, and
    without its file extension too (`notes-bob@example.com.txt`), overlaps resolved."""
    spaced = _ID_SEPARATORS.sub(_blank, name)
    variants = {name, spaced, _EXTENSION.sub(_blank, spaced)}
    return resolve(sp for v in variants for sp in default_scrubber().find(v))


def mask_name(name: str) -> str:
    """A path or short field with its PII replaced by `<TYPE>`."""
    return redact(name, name_spans(name)) if name else name


def mask_id(doc_id: str) -> str:
    """An id with its PII parts replaced by `<TYPE>` and, if any were, a hash of the original appended
    (`files:<EMAIL_ADDRESS>.txt~3f2a9c1b04d5`), so masked ids stay unique. Clean ids are kept as they are."""
    spans = name_spans(doc_id)
    if not spans:
        return doc_id
    digest = hashlib.sha256(doc_id.encode("utf-8")).hexdigest()[:12]
    return f"{redact(doc_id, spans)}~{digest}"


def mask_value(value: Any) -> Any:
    """Strings masked (as names: paths and ids in meta fields too); lists and dicts item by item."""
    if isinstance(value, str):
        return mask_name(value)
    if isinstance(value, list):
        return [mask_value(v) for v in value]
    if isinstance(value, dict):
        return {k: mask_value(v) for k, v in value.items()}
    return value


def mask_record(record: dict[str, Any], ids: tuple[str, ...] = ("id",)) -> dict[str, Any]:
    """A sample record safe to log: the `ids` fields through `mask_id`, every other string through
    `mask_text`."""
    return {k: mask_id(v) if k in ids and isinstance(v, str) else mask_value(v) for k, v in record.items()}
