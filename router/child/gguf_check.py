"""Check a model file before llama.cpp sees it, and keep llama.cpp's own error lines.

llama.cpp, asked to load a bad file, raises only "failed to load model"; the reason went to
its log. We check what is cheap to check (exists, is a file, starts with the GGUF magic) and
record llama.cpp's recent error lines, so a failed load ends with one line that says why.
"""

from __future__ import annotations

import collections
import ctypes
import sys
from pathlib import Path

import llama_cpp

from router.errors import ModelLoadFailed

GGUF_MAGIC = b"GGUF"
_GGML_LOG_LEVEL_WARN = 3  # ggml.h: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5
_GGML_LOG_LEVEL_ERROR = 4
_GGML_LOG_LEVEL_CONT = 5

_recent_errors: collections.deque[str] = collections.deque(maxlen=8)
_last_level = 0


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _on_llama_log(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    """Forward llama.cpp's warnings and errors to stderr, and remember the errors."""
    global _last_level
    if level == _GGML_LOG_LEVEL_CONT:
        level = _last_level
    _last_level = level
    if level in (_GGML_LOG_LEVEL_WARN, _GGML_LOG_LEVEL_ERROR):
        message = text.decode("utf-8", errors="replace")
        sys.stderr.write(message)
        if level == _GGML_LOG_LEVEL_ERROR and message.strip():
            _recent_errors.append(message.strip())


def capture_llama_log() -> None:
    """Route llama.cpp's log through :func:`_on_llama_log` (replacing llama-cpp-python's)."""
    llama_cpp.llama_log_set(_on_llama_log, ctypes.c_void_p(0))


def capture_mtmd_log() -> None:
    """Route the multimodal library's log (projector loading, image encoding) the same way."""
    from llama_cpp import mtmd_cpp

    mtmd_cpp.mtmd_log_set(_on_llama_log, ctypes.c_void_p(0))
    mtmd_cpp.mtmd_helper_log_set(_on_llama_log, ctypes.c_void_p(0))


def recent_llama_errors() -> str:
    """llama.cpp's last error lines, joined, and forgotten; "" when there were none."""
    lines = list(_recent_errors)
    _recent_errors.clear()
    return "; ".join(lines)


def check_gguf(path: Path) -> None:
    """Raise ModelLoadFailed, with one line saying why, unless ``path`` looks like a GGUF."""
    if not path.exists():
        raise ModelLoadFailed(f"model file not found: {path}", kind="not_found")
    if not path.is_file():
        raise ModelLoadFailed(f"model path is not a file: {path}", kind="not_found")
    try:
        with path.open("rb") as file:
            magic = file.read(4)
    except OSError as exc:
        raise ModelLoadFailed(
            f"cannot read model file {path}: {exc.strerror}", kind="unreadable"
        ) from exc
    if magic != GGUF_MAGIC:
        raise ModelLoadFailed(
            f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')", kind="not_gguf"
        )
