"""Edit conf.d files over HTTP, keeping their comments, order and formatting (tomlkit).

``PUT`` sets the model's whole configuration (keys not sent are removed, comments on the keys
that stay are kept), ``PATCH`` changes only the keys sent (``null`` removes one), ``DELETE``
removes the file. Every write is validated exactly as the watcher would read it, before it
lands, and lands atomically (a temporary file in the same folder, then a rename).

A file that is replaced keeps its mode and, where the router may set them (as root), its owner
and group: an operator's 0600 stays 0600. A new file is made 0600, whatever the umask: it may
hold ``[env]`` secrets, and only the router's user needs to read it; ``chmod`` it to share it,
and later writes keep that mode.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
import tomllib
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import Table

from router.errors import (
    ConfigInvalid,
    Conflict,
    InvalidField,
    InvalidRequest,
    ModelNotFound,
    RouterError,
)
from router.models.confd import MAX_FILE_BYTES, MAX_ID_BYTES, model_spec_from

_FILE_NAME = re.compile(r"[\w.-]+")
NEW_FILE_MODE = 0o600


def config_path_for(conf_dir: Path, model_id: str, existing: Path | None) -> Path:
    """The file that holds (or will hold) ``model_id``'s configuration."""
    if existing is not None:
        return existing
    if len(model_id.encode()) > MAX_ID_BYTES:
        raise InvalidField(
            "model",
            f"is {len(model_id.encode())} bytes long; a model id that names a conf.d file may "
            f"be {MAX_ID_BYTES} bytes at most",
        )
    if not _FILE_NAME.fullmatch(model_id):
        raise InvalidField("model", f"{model_id!r} cannot be a file name in conf.d")
    return conf_dir / f"{model_id}.toml"


def read_config(path: Path) -> dict[str, Any]:
    """The file's settings, as plain JSON-able values."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelNotFound(f"no configuration file for this model ({path})") from exc
    except OSError as exc:
        raise RouterError(f"cannot read {path}: {exc.strerror}") from exc
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise Conflict(
            f"{path} is not valid TOML now ({exc}); fix it by hand or replace it with PUT"
        ) from exc


def write_config(path: Path, values: dict[str, Any], *, replace_all: bool) -> str:
    """Apply ``values`` to the file at ``path`` (created if absent); return the new text.

    Raises InvalidRequest, naming the key and the problem, if the result would be invalid;
    the file is then untouched. ``replace_all`` (PUT) may replace a file that no longer
    parses; a PATCH to one is a Conflict.
    """
    try:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
    except (OSError, UnicodeDecodeError) as exc:
        if not replace_all:
            raise Conflict(f"cannot read {path} ({exc}); replace it with PUT") from exc
        text = ""
    try:
        document = tomlkit.parse(text)
    except TOMLKitError as exc:
        if not replace_all:
            raise Conflict(f"{path} is not valid TOML now ({exc}); replace it with PUT") from exc
        document = tomlkit.document()
    try:
        if replace_all:
            for key in [key for key in document if key not in values]:
                del document[key]
        for key, value in values.items():
            _set(document, key, value)
        new_text = tomlkit.dumps(document)
        data = new_text.encode("utf-8")
    except (TOMLKitError, TypeError, ValueError) as exc:  # ValueError: a lone surrogate
        raise InvalidRequest(f"these values cannot be written as TOML: {exc}") from exc
    if len(data) > MAX_FILE_BYTES:
        raise InvalidRequest(f"the file would be larger than {MAX_FILE_BYTES} bytes")
    try:
        model_spec_from(tomllib.loads(new_text), path)
    except ConfigInvalid as exc:
        raise InvalidRequest(f"the configuration would be invalid: {exc.message}") from exc
    except tomllib.TOMLDecodeError as exc:  # a value tomlkit wrote but TOML cannot read back
        raise InvalidRequest(f"the configuration would not be valid TOML: {exc}") from exc
    try:
        _write_atomically(path, data)
    except OSError as exc:
        raise RouterError(f"cannot write {path}: {exc.strerror}") from exc
    return new_text


def delete_config(path: Path | None) -> None:
    if path is None or not path.exists():
        raise Conflict("this model is not defined by a conf.d file; there is nothing to delete")
    try:
        path.unlink()
    except OSError as exc:
        raise RouterError(f"cannot delete {path}: {exc.strerror}") from exc


def _set(document: Any, key: str, value: Any) -> None:
    """Set ``key``; tables (args, env) are merged key by key so their comments stay."""
    if value is None:
        if key in document:
            del document[key]
        return
    current = document.get(key)
    if isinstance(value, dict) and isinstance(current, Table):
        for inner in [k for k in current if k not in value]:
            del current[inner]
        for inner_key, inner_value in value.items():
            _set(current, inner_key, inner_value)
        return
    if current is not None and current == value:
        return  # unchanged: leave its formatting (and trailing comment) as it is
    document[key] = value


def _write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one rename, keeping its mode (and owner, as root)."""
    try:
        current: os.stat_result | None = path.stat()
    except FileNotFoundError:
        current = None
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    # O_EXCL: never write through a file (or link) someone else put at the temporary name.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, NEW_FILE_MODE)
    try:
        try:
            if current is not None:
                if (current.st_uid, current.st_gid) != (os.geteuid(), os.getegid()):
                    # Only root may give a file away; anyone else keeps it as their own.
                    with contextlib.suppress(PermissionError):
                        os.fchown(fd, current.st_uid, current.st_gid)
                os.fchmod(fd, stat.S_IMODE(current.st_mode))
            else:
                os.fchmod(fd, NEW_FILE_MODE)  # the umask may have taken bits of it away
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
