"""conf.d files: every key, every bad-file case, precedence and merging, without processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.catalog import ModelSpec
from router.confd import (
    ConfigProblem,
    RouterFileError,
    child_argv,
    effective_child_options,
    merge_catalog,
    read_model_file,
    read_router_file,
    scan_conf_dir,
)


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    (tmp_path / "weights.gguf").write_bytes(b"GGUF")
    folder = tmp_path / "conf.d"
    folder.mkdir()
    return folder


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_every_key(conf: Path) -> None:
    path = write(
        conf,
        "m.toml",
        """
name = "custom"
model = "../weights.gguf"
aliases = ["a", "b"]
description = "d"
ttl = 30
load_on_startup = true
pinned = true
stop_timeout = 3
max_queue = 5
[args]
ctx_size = 512
flash_attn = true
mmap = false
embeddings = true
[env]
X = "1"
""",
    )
    spec = read_model_file(path)
    assert isinstance(spec, ModelSpec)
    assert spec.id == "custom"
    assert spec.path == (conf.parent / "weights.gguf").resolve()
    assert spec.aliases == ("a", "b")
    assert (spec.ttl_s, spec.load_on_startup, spec.is_pinned) == (30, True, True)
    assert (spec.stop_timeout_s, spec.max_queue, spec.description) == (3, 5, "d")
    assert spec.env == {"X": "1"}
    assert child_argv(spec.args) == [
        "--ctx-size", "512", "--flash-attn", "on", "--no-mmap", "--embeddings",
    ]  # fmt: skip


def test_id_defaults_to_the_file_stem(conf: Path) -> None:
    spec = read_model_file(write(conf, "stem-name.toml", 'model = "../weights.gguf"\n'))
    assert isinstance(spec, ModelSpec)
    assert spec.id == "stem-name"


def test_command_model_needs_a_port_placeholder(conf: Path) -> None:
    ok = read_model_file(write(conf, "c.toml", 'command = ["srv", "--port", "{port}"]\n'))
    assert isinstance(ok, ModelSpec)
    assert ok.command == ("srv", "--port", "{port}")
    bad = read_model_file(write(conf, "d.toml", 'command = ["srv"]\n'))
    assert isinstance(bad, ConfigProblem)
    assert "{port}" in bad.message


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("model = \n", 1, "not valid TOML"),
        ('model = "../weights.gguf"\nttl = "long"\n', 2, "'ttl' must be a number"),
        ('model = "../weights.gguf"\nttll = 3\n', 2, "did you mean 'ttl'"),
        ('model = "../weights.gguf"\n[args]\nctx = 5\n', 3, "did you mean 'ctx_size'"),
        ('model = "../weights.gguf"\n[args]\nflash_attn = "sometimes"\n', 3, "one of on, off"),
        ('model = "../missing.gguf"\n', 1, "no such file"),
        ('model = "../weights.gguf"\npinned = "yes"\n', 2, "true or false"),
        ('model = "../weights.gguf"\nttl = -1\n', 2, "0 or more"),
        ('model = "../weights.gguf"\n[env]\nX = 1\n', 2, "must be a string"),
    ],
)
def test_bad_files_are_problems_with_file_line_and_advice(
    conf: Path, text: str, line: int, fragment: str
) -> None:
    problem = read_model_file(write(conf, "x.toml", text))
    assert isinstance(problem, ConfigProblem)
    assert problem.line == line
    assert fragment in problem.message
    assert str(problem).startswith(f"{conf / 'x.toml'}:{line}: ")


def test_duplicate_names_make_both_invalid_naming_each_other(conf: Path) -> None:
    write(conf, "one.toml", 'model = "../weights.gguf"\naliases = ["shared"]\n')
    write(conf, "two.toml", 'model = "../weights.gguf"\naliases = ["shared"]\n')
    write(conf, "three.toml", 'model = "../weights.gguf"\n')
    scan = scan_conf_dir(conf)
    assert sorted(scan.specs) == ["three"]
    assert "two.toml" in str(scan.problems["one"])
    assert "one.toml" in str(scan.problems["two"])


def test_a_file_configures_the_folder_model_of_the_same_id(conf: Path) -> None:
    write(conf, "weights.toml", "ttl = 9\n")
    folder_spec = ModelSpec(id="weights", path=conf.parent / "weights.gguf")
    specs, problems = merge_catalog({"weights": folder_spec}, scan_conf_dir(conf))
    assert problems == {}
    assert specs["weights"].ttl_s == 9
    assert specs["weights"].path == folder_spec.path
    assert specs["weights"].source == "file"
    _, problems = merge_catalog({}, scan_conf_dir(conf))
    assert "no model of that name" in str(problems["weights"])


def test_precedence_defaults_then_file_then_command_line() -> None:
    spec = ModelSpec(id="m", path=Path("m.gguf"), args={"ctx_size": 2, "threads": 2})
    options = effective_child_options(
        spec, defaults={"ctx_size": 1, "threads": 1, "parallel": 1}, overrides={"threads": 3}
    )
    assert options == {"ctx_size": 2, "threads": 3, "parallel": 1}


def test_router_file(tmp_path: Path) -> None:
    path = write(tmp_path, "router.toml", "[router]\nmodels_max = 2\n[defaults]\nctx_size = 8\n")
    router_file = read_router_file(path)
    assert router_file.router == {"models_max": 2}
    assert router_file.defaults == {"ctx_size": 8}
    bad = write(tmp_path, "bad.toml", "[defaults]\nctx_sise = 8\n")
    with pytest.raises(RouterFileError, match="did you mean 'ctx_size'"):
        read_router_file(bad)
