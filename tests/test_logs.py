"""Where log lines go and how they look (``router/logs.py``): formats, the file, ``-v``."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.logs import configure_logging


@pytest.fixture
def clean_logging() -> Iterator[None]:
    """The ``router`` and root loggers as they were, whatever a test configured."""
    router_logger, root = logging.getLogger("router"), logging.getLogger()
    saved = (router_logger.handlers[:], router_logger.level, router_logger.propagate)
    root_saved = (root.handlers[:], root.level)
    yield
    for handler in router_logger.handlers:
        if handler not in saved[0]:
            handler.close()
    router_logger.handlers[:], router_logger.level, router_logger.propagate = saved
    root.handlers[:], root.level = root_saved


@pytest.mark.usefixtures("clean_logging")
def test_json_lines_in_a_private_file(tmp_path: Path) -> None:
    log_file = tmp_path / "router.log"
    configure_logging("json", log_file, 0)
    logging.getLogger("router.test").info("one %s", "line\nnot two")
    logging.getLogger("router.test").debug("hidden without -v")
    [line] = log_file.read_text().splitlines()
    entry = json.loads(line)
    assert entry["message"] == "one line\nnot two"
    assert entry["level"] == "info" and entry["logger"] == "router.test"
    assert entry["time"].endswith("Z")
    assert stat.S_IMODE(os.stat(log_file).st_mode) == 0o600


@pytest.mark.usefixtures("clean_logging")
def test_text_lines_are_escaped_and_appended(tmp_path: Path) -> None:
    log_file = tmp_path / "router.log"
    log_file.write_text("kept\n")
    configure_logging("text", log_file, 0)
    logging.getLogger("router.test").warning("a\nforged\x1b line")
    lines = log_file.read_text().splitlines()
    assert lines[0] == "kept"
    assert len(lines) == 2 and lines[1].endswith(r"a\nforged\x1b line")


@pytest.mark.usefixtures("clean_logging")
def test_verbose_shows_debug_lines(tmp_path: Path) -> None:
    log_file = tmp_path / "router.log"
    configure_logging("text", log_file, 1)
    logging.getLogger("router.test").debug("now shown")
    logging.getLogger("trio.test").debug("a library's: only with -vv")
    assert "now shown" in log_file.read_text()
    assert "library" not in log_file.read_text()


def test_an_unusable_log_file_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder" / "router.log"
    completed = subprocess.run(
        [sys.executable, "-m", "router", "serve", "--models-dir", str(tmp_path), "--port", "0",
         "--log-file", str(missing)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines() == [
        f"llama-router: error: --log-file {missing}: No such file or directory"
    ]
