"""The config API's file handling, without a router: modes kept, names bounded, bad input 4xx."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from router.edge.config_api import config_path_for, read_config, write_config
from router.errors import Conflict, InvalidField, InvalidRequest

MODEL = 'model = "../weights.gguf"\n'


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    (tmp_path / "weights.gguf").write_bytes(b"GGUF")
    folder = tmp_path / "conf.d"
    folder.mkdir()
    return folder


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644, 0o400])
def test_a_write_keeps_the_mode_of_the_file_it_replaces(conf: Path, mode: int) -> None:
    path = conf / "m.toml"
    path.write_text(MODEL)
    path.chmod(mode)
    write_config(path, {"ttl": 5}, replace_all=False)
    assert "ttl = 5" in path.read_text()
    assert mode_of(path) == mode
    write_config(path, {"model": "../weights.gguf"}, replace_all=True)
    assert mode_of(path) == mode


def test_a_write_keeps_the_owner_and_group_of_the_file_it_replaces(conf: Path) -> None:
    path = conf / "m.toml"
    path.write_text(MODEL)
    if os.geteuid() == 0:  # only root may give a file away: check that it does
        os.chown(path, 4321, 4321)
    before = path.stat()
    write_config(path, {"ttl": 5}, replace_all=False)
    after = path.stat()
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)


def test_a_new_file_is_private_whatever_the_umask(conf: Path) -> None:
    previous = os.umask(0o022)
    try:
        path = conf / "fresh.toml"
        write_config(path, {"model": "../weights.gguf"}, replace_all=True)
    finally:
        os.umask(previous)
    assert mode_of(path) == 0o600
    assert [p.name for p in conf.iterdir()] == ["fresh.toml"]  # no temporary left behind


def test_a_model_id_too_long_for_a_file_name_is_a_400(conf: Path) -> None:
    with pytest.raises(InvalidField, match="200 bytes at most"):
        config_path_for(conf, "m" * 300, None)
    with pytest.raises(InvalidField, match="200 bytes at most"):
        config_path_for(conf, "é" * 101, None)  # bytes count, not characters
    longest = config_path_for(conf, "m" * 200, None)
    write_config(longest, {"model": "../weights.gguf"}, replace_all=True)  # and its temporary
    assert longest.is_file()


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"aliases": ["a", None]}, "cannot be written as TOML"),
        ({"description": "\ud800"}, "cannot be written as TOML"),
        ({"env": {"A=B": "x"}}, "not a usable variable name"),
        ({"env": {"A": "x\u0000"}}, "NUL"),
        ({"ttl": float("nan")}, "0 or more seconds"),
        ({"description": "d" * (1024 * 1024)}, "larger than"),
    ],
)
def test_values_no_file_can_hold_are_a_400_and_leave_it_untouched(
    conf: Path, values: dict[str, object], fragment: str
) -> None:
    path = conf / "m.toml"
    path.write_text(MODEL)
    with pytest.raises(InvalidRequest, match=fragment):
        write_config(path, values, replace_all=False)
    assert path.read_text() == MODEL


def test_a_file_that_no_longer_parses_can_be_replaced_not_patched(conf: Path) -> None:
    path = conf / "m.toml"
    path.write_text("model = [\n")
    with pytest.raises(Conflict, match="replace it with PUT"):
        read_config(path)
    with pytest.raises(Conflict, match="replace it with PUT"):
        write_config(path, {"ttl": 1}, replace_all=False)
    write_config(path, {"model": "../weights.gguf"}, replace_all=True)
    assert read_config(path) == {"model": "../weights.gguf"}
