"""Tiny real models for tests; they live in `tasks/common/testing.py` (benchmarks use them too).

from tests.tiny_models import tiny_lm_folder
folder = tiny_lm_folder(tmp_path / "model")        # loads with from_pretrained, offline
"""

from __future__ import annotations

from tasks.common.testing import DEFAULT_TEXTS, single_thread, tiny_llama, tiny_lm_folder, tiny_tokenizer

__all__ = ["DEFAULT_TEXTS", "single_thread", "tiny_llama", "tiny_lm_folder", "tiny_tokenizer"]
