"""Edit conf.d files over HTTP, keeping their comments, order and formatting (tomlkit).

``PUT`` sets the model's whole configuration (keys not sent are removed, comments on the keys
that stay are kept), ``PATCH`` changes only the keys sent (``null`` removes one), ``DELETE``
removes the file. Every write is validated exactly as the watcher would read it, before it
lands, and lands atomically (a temporary file in the same folder, then a rename).
"""

from __future__ import annotations

import os
import re
import secrets
import tomllib
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.items import Table

from router.confd import ConfigInvalid, model_spec_from
from router.errors import Conflict, InvalidField, InvalidRequest, ModelNotFound

_FILE_NAME = re.compile(r"[\w.-]+")


def config_path_for(conf_dir: Path, model_id: str, existing: Path | None) -> Path:
    """The file that holds (or will hold) ``model_id``'s configuration."""
    if existing is not None:
        return existing
    if not _FILE_NAME.fullmatch(model_id):
        raise InvalidField("model", f"{model_id!r} cannot be a file name in conf.d")
    return conf_dir / f"{model_id}.toml"


def read_config(path: Path) -> dict[str, Any]:
    """The file's settings, as plain JSON-able values."""
    if not path.is_file():
        raise ModelNotFound(f"no configuration file for this model ({path})")
    return tomllib.loads(path.read_text(encoding="utf-8"))


def write_config(path: Path, values: dict[str, Any], *, replace_all: bool) -> str:
    """Apply ``values`` to the file at ``path`` (created if absent); return the new text.

    Raises InvalidRequest, naming the key and the problem, if the result would be invalid;
    the file is then untouched.
    """
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    document = tomlkit.parse(text)
    if replace_all:
        for key in [key for key in document if key not in values]:
            del document[key]
    for key, value in values.items():
        _set(document, key, value)
    new_text = tomlkit.dumps(document)
    try:
        model_spec_from(tomllib.loads(new_text), path)
    except ConfigInvalid as exc:
        raise InvalidRequest(f"the configuration would be invalid: {exc.message}") from exc
    except tomllib.TOMLDecodeError as exc:  # a value tomlkit wrote but TOML cannot read back
        raise InvalidRequest(f"the configuration would not be valid TOML: {exc}") from exc
    _write_atomically(path, new_text)
    return new_text


def delete_config(path: Path | None) -> None:
    if path is None or not path.exists():
        raise Conflict("this model is not defined by a conf.d file; there is nothing to delete")
    path.unlink()


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


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with temporary.open("w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
