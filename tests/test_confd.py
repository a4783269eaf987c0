"""conf.d files: every key, every bad-file case, precedence and merging, without processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.child_options import child_argv, effective_child_options
from router.errors import RouterFileError
from router.models.confd import (
    ConfigProblem,
    merge_catalog,
    read_model_file,
    read_router_file,
    scan_conf_dir,
)
from router.spec import ModelSpec


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
        ('model = "../weights.gguf"\n[env]\nX = 1\n', 3, "must be a string"),
        # Values a child's argv or environment cannot hold: refused before any spawn.
        ('model = "../weights.gguf"\n[env]\n"A=B" = "x"\n', 3, "not a usable variable name"),
        ('model = "../weights.gguf"\n[env]\n"" = "x"\n', 3, "not a usable variable name"),
        ('model = "../weights.gguf"\n[env]\n"A\\u0000" = "x"\n', 2, "variable name"),
        ('model = "../weights.gguf"\n[env]\n"1A" = "x"\n', 3, "not a usable variable name"),
        ('model = "../weights.gguf"\n[env]\nA = "x\\u0000y"\n', 3, "NUL"),
        ('model = "../weights.gguf"\nenv = {A = "\\u0000"}\n', 2, "NUL"),
        ('command = ["srv\\u0000", "{port}"]\n', 1, "NUL"),
        ('model = "../weights\\u0000.gguf"\n', 1, "NUL"),
        ('model = "../weights.gguf"\n[args]\nchat_template = "\\u0000"\n', 3, "NUL"),
        ('model = "../weights.gguf"\n[args]\nctx_size = 99999999999\n', 3, "out of range"),
        ('model = "../weights.gguf"\naliases = ["a\\u0000"]\n', 2, "control characters"),
        ('command = ["srv", "{port}"]\nhealth = "health"\n', 2, "starts with /"),
        ('command = ["srv", "{port}"]\nhealth = "/a b"\n', 2, "starts with /"),
        ('model = "../weights.gguf"\nttl = nan\n', 2, "0 or more seconds"),
        ('model = "../weights.gguf"\nstop_timeout = inf\n', 2, "0 or more seconds"),
        ('model = "../weights.gguf"\nmax_queue = 10000000000\n', 2, "up to"),
        (f'model = "../weights.gguf"\nname = "{"n" * 201}"\n', 2, "200 bytes at most"),
        (f'model = "../weights.gguf"\ndescription = "{"d" * 4097}"\n', 2, "4096"),
        (f'command = ["srv", "{"x" * 70000}", "{{port}}"]\n', 1, "longer than"),
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


def test_a_command_may_listen_on_a_socket_instead_of_a_port(conf: Path) -> None:
    spec = read_model_file(write(conf, "s.toml", 'command = ["srv", "--host", "{socket}"]\n'))
    assert isinstance(spec, ModelSpec)


def test_usable_environments_are_kept(conf: Path) -> None:
    text = 'model = "../weights.gguf"\n[env]\n_X = ""\nLD_LIBRARY_PATH = "/a:/b"\nz9 = "\\n"\n'
    spec = read_model_file(write(conf, "e.toml", text))
    assert isinstance(spec, ModelSpec)
    assert spec.env == {"_X": "", "LD_LIBRARY_PATH": "/a:/b", "z9": "\n"}


def test_an_oversized_file_is_a_problem_not_read(conf: Path) -> None:
    path = write(conf, "big.toml", 'model = "../weights.gguf"\n' + "#" * (1024 * 1024) + "\n")
    problem = read_model_file(path)
    assert isinstance(problem, ConfigProblem)
    assert "bytes long" in problem.message


def test_a_bad_name_is_listed_under_the_file_stem(conf: Path) -> None:
    write(conf, "stem.toml", f'model = "../weights.gguf"\nname = "{"n" * 300}"\n')
    assert list(scan_conf_dir(conf).problems) == ["stem"]


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
    assert specs["weights"].source == "conf.d"
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
    nul = write(tmp_path, "nul.toml", '[defaults]\nchat_template = "x\\u0000"\n')
    with pytest.raises(RouterFileError, match="NUL"):
        read_router_file(nul)
