"""Runs llama.cpp's own router tests (copied unmodified beside this file) against
``llama-router``, offline.

Loaded with ``-p tests.llama_cpp_router.offline_plugin`` (the Makefile's ``test`` target does);
without it, ``tests/conftest.py`` leaves this folder out of collection, because llama.cpp's
harness cannot run on its own here. What the plugin supplies, so that the copied files need no
change:

* ``LLAMA_SERVER_BIN_PATH``: the ``llama-router`` of this virtualenv, started by ``utils.py``
  with llama-server's flags;
* ``PORT``: a free loopback port, not llama.cpp's default 8080, which another router on this
  machine may hold, and outside the ephemeral range;
* ``LLAMA_CACHE``: a fresh folder in the hub layout holding the models the tests name, as
  generated tiny GGUFs (``ggml-org/tinygemma3-GGUF:Q8_0`` is Gemma 3 270M, where a test
  wants real text);
* ``LLAMA_ROUTER_CONF_DIR``: an empty folder, so the repository's ``conf.d`` (the harness
  starts the router in the working folder) adds no model;
* a fake Hugging Face hub on loopback (``HF_ENDPOINT`` and llama.cpp's ``MODEL_ENDPOINT``)
  serving the repositories the download, delete and remote-preset cases fetch;
* ``ServerPreset.load_all`` (the session fixture's model download) as a no-op: the cache
  above is already full.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import gemma_path
from tests.fake_hub import FakeHub, serving_fake_hub, write_cached_model
from tests.tiny_models import write_tiny_llama

HERE = Path(__file__).resolve().parent

# The cache llama.cpp's CI fills in its session fixture: repository, file, what to write.
CACHED = {
    "ggml-org/tinygemma3-GGUF": "tinygemma3-Q8_0.gguf",
    "ggml-org/test-model-stories260K": "stories260K-F32.gguf",
    "ggml-org/test-model-stories260K-infill": "stories260K-infill-F32.gguf",
}
GEMMA_REPO = "ggml-org/tinygemma3-GGUF"
# Served by the fake hub only: downloaded (and deleted) by the tests.
DOWNLOAD_REPO = ("ggml-org/test-model-router-download", "test-model-router-download-F16.gguf")
PRESET_REPO = "ggml-org/test-preset-ci"
# llama.cpp's test-preset-ci repository: a preset.ini naming two models of the cache.
PRESET_INI = b"""version = 1

[tinygemma3-preset]
hf-repo = ggml-org/tinygemma3-GGUF:Q8_0

[stories260K-test]
hf-repo = ggml-org/test-model-stories260K:F32
"""

_stack = contextlib.ExitStack()


def _free_port() -> int:
    """A free port below the kernel's ephemeral range: the harness starts every test's router
    on the same port, which a socket of another process, bound to port 0, must not take
    meanwhile."""
    rng = random.Random()
    for _ in range(100):
        port = rng.randrange(20000, 32000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 20000 and 32000")


def pytest_configure(config: pytest.Config) -> None:
    """Fill the cache, start the fake hub and point llama.cpp's harness at both."""
    work = Path(tempfile.mkdtemp(prefix="llama-cpp-router-tests-"))
    _stack.callback(shutil.rmtree, work, ignore_errors=True)
    cache = work / "cache"
    conf_dir = work / "conf.d"  # empty: not the repository's conf.d, whose Gemma loads at start
    conf_dir.mkdir()
    tiny = write_tiny_llama(work / "tiny.gguf")
    for seed, (repo, filename) in enumerate(CACHED.items()):
        source = (
            gemma_path() if repo == GEMMA_REPO else write_tiny_llama(work / filename, seed=seed + 1)
        )
        write_cached_model(cache, repo, {filename: source})
    hub = _stack.enter_context(serving_fake_hub(FakeHub()))
    hub.add_file(DOWNLOAD_REPO[0], DOWNLOAD_REPO[1], tiny)
    hub.add_file(PRESET_REPO, "preset.ini", PRESET_INI)
    os.environ.update(
        {
            "LLAMA_SERVER_BIN_PATH": str(Path(sys.executable).with_name("llama-router")),
            "PORT": str(_free_port()),
            "LLAMA_CACHE": str(cache),
            "HF_ENDPOINT": hub.endpoint,
            "MODEL_ENDPOINT": hub.endpoint + "/",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "LLAMA_ROUTER_CONF_DIR": str(conf_dir),
        }
    )
    (HERE / "tmp").mkdir(exist_ok=True)  # utils.TMP_DIR: the tests write presets there


def pytest_unconfigure(config: pytest.Config) -> None:
    _stack.close()


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """The harness's ``utils`` is imported by its conftest during collection; its session
    fixture then calls ``ServerPreset.load_all`` to download, which has nothing left to do."""
    utils = sys.modules.get("utils")
    if utils is not None and hasattr(utils, "ServerPreset"):
        utils.ServerPreset.load_all = staticmethod(lambda: None)
