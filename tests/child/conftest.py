"""Fixtures of the child's in-process tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import pytest


@pytest.fixture(scope="module")
def tiny_llama(tiny_model: Path) -> Iterator[llama_cpp.Llama]:
    """The tiny model loaded in the test process (``in_process.sampled_tokens``)."""
    llama = llama_cpp.Llama(str(tiny_model), n_ctx=512, n_threads=1, verbose=False)
    yield llama
    llama.close()
