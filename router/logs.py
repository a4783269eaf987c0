"""Where the router's log lines go and how they look: ``--log-format text|json``,
``--log-file PATH``, ``-v``.

Every line of the ``router`` loggers (the access lines of ``edge/access_log.py`` among them)
goes to stderr and, with ``--log-file``, is appended to that file too (created mode 0600: the
lines name clients and models). A line is one line whatever it carries: text lines have their
non-printable characters escaped, JSON lines are one object each (``json.dumps`` escapes
them). A traceback, in text, follows its line.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from router.errors import SettingsError

LOG_FORMATS = ("text", "json")  # --log-format

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\", '"': '\\"'}


def printable(text: str, *, quoted: bool = False) -> str:
    """``text`` with every character that is not printable (control characters, line and
    paragraph separators) escaped as ``\\n``, ``\\xNN`` or ``\\uNNNN``; with ``quoted``, also
    ``"`` and ``\\``, so that the text can sit between quotes and be read back."""
    if text.isprintable() and not (quoted and ('"' in text or "\\" in text)):
        return text  # the common case, at C speed
    out = []
    for char in text:
        if char in _ESCAPES and (quoted or char not in '"\\'):
            out.append(_ESCAPES[char])
        elif char.isprintable():
            out.append(char)
        else:
            out.append(char.encode("unicode_escape").decode("ascii"))
    return "".join(out)


_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


class TextFormatter(logging.Formatter):
    """``2026-11-27 10:48:46.123 message``, the message made printable."""

    def format(self, record: logging.LogRecord) -> str:
        when = time.strftime(_DATE_FORMAT, time.localtime(record.created))
        line = f"{when}.{int(record.msecs):03d} {printable(record.getMessage())}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
    an access line's fields under ``access``, a traceback under ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry: dict[str, Any] = {
            "time": f"{when}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            entry["access"] = access
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=True, default=str)


def open_log_file(path: Path) -> TextIO:
    """``path`` opened to append, created mode 0600 if it is not there.

    Raises SettingsError (one line, exit 2) if it cannot be opened.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise SettingsError(f"--log-file {path}: {exc.strerror}") from None
    return open(fd, "a", encoding="utf-8", buffering=1)  # line-buffered: whole lines


def configure_logging(log_format: str, log_file: Path | None, verbosity: int) -> None:
    """Send the ``router`` loggers' lines to stderr (and ``log_file``) in ``log_format``.

    ``verbosity``: 0 shows INFO and above (access lines included); 1 (``-v``) adds the
    router's DEBUG lines; 2 (``-vv``) also its libraries' (trio, httpx...).
    """
    formatter: logging.Formatter = JsonFormatter() if log_format == "json" else TextFormatter()
    streams: list[TextIO] = [sys.stderr]
    if log_file is not None:
        streams.append(open_log_file(log_file))
    router_logger = logging.getLogger("router")
    for stream in streams:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter)
        router_logger.addHandler(handler)
        if verbosity >= 2:
            logging.getLogger().addHandler(handler)
    router_logger.setLevel(logging.DEBUG if verbosity >= 1 else logging.INFO)
    if verbosity >= 2:
        router_logger.propagate = False  # its lines already reach the same handlers
        logging.getLogger().setLevel(logging.DEBUG)
