"""Small builders for tests: real upstream stage folders with real manifests, made from tiny data.

`seal` and `documents_stage` live in `tasks/common/testing.py` (benchmarks use them too).
"""

from __future__ import annotations

from tasks.common.data import Document
from tasks.common.testing import documents_stage, seal

__all__ = ["docs", "documents_stage", "seal"]


def docs(*texts: str, source: str = "test") -> list[Document]:
    return [Document(id=f"d{i}", text=t, source=source) for i, t in enumerate(texts)]
