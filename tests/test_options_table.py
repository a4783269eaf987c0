"""One table of model options: every surface generated from it agrees with it, and
llama-server's spellings, variables and habits work."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from router import options_table
from router.child.reasoning import ReasoningFormat
from router.cli import build_parser, child_options_from, main
from router.edge.extra_args import ALLOWED_EXTRA_ARGS, ExtraArgLimits, checked_extra_args
from router.errors import ConfigInvalid, InvalidField
from router.model_options import (
    DESCRIPTION,
    EngineOptions,
    FlashAttention,
    Pooling,
    ServeOptions,
    add_child_arguments,
    parse_child_arguments,
)
from router.models.confd import checked_child_options
from router.options_table import COMPAT_FLAGS, MODEL_OPTIONS, ModelOption, OptionParser
from tests.processes import run_child_to_exit, running_child
from tests.test_cli import one_line_error
from tests.tiny_models import write_tiny_llama

DOCS = Path(__file__).parent.parent / "docs" / "configuration.md"


@pytest.fixture(autouse=True)
def _no_llama_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Away from the repository's conf.d, and from variables of the machine's environment."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith(("LLAMA_ARG_", "LLAMA_ROUTER_")) or name == "LLAMA_API_KEY":
            monkeypatch.delenv(name)


def sample(option: ModelOption) -> tuple[list[str], Any]:
    """A value for ``option`` other than its default: as command-line words, as parsed."""
    if option.kind == "bool":
        return [], True
    if option.kind == "negated":
        return [], False
    if option.kind == "choice":
        value = next(choice for choice in reversed(option.choices) if choice != option.default)
        return [value], value
    if option.kind in ("str", "path"):
        return ["x.txt"], "x.txt"
    value = 2 if option.kind == "int" else 0.5
    assert value != option.default, option.key
    return [str(value)], value


def serve_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", "--models-dir", ".", *argv])


def child_parser() -> argparse.ArgumentParser:
    parser = OptionParser(prog="llama-router child", description=DESCRIPTION)
    add_child_arguments(parser)
    return parser


@pytest.mark.parametrize("option", MODEL_OPTIONS, ids=lambda option: option.key)
def test_every_spelling_of_every_option_reaches_the_routers_defaults(option: ModelOption) -> None:
    words, value = sample(option)
    for flag in option.flags:
        assert child_options_from(serve_args(flag, *words)) == {option.key: value}, flag
    assert child_options_from(serve_args()) == {}


@pytest.mark.parametrize("option", MODEL_OPTIONS, ids=lambda option: option.key)
def test_the_child_takes_every_spelling_with_the_tables_default(option: ModelOption) -> None:
    parser = child_parser()
    assert getattr(parser.parse_args(["-m", "x.gguf"]), option.key) == option.default
    words, value = sample(option)
    for flag in option.flags:
        assert getattr(parser.parse_args(["-m", "x.gguf", flag, *words]), option.key) == value


def test_the_childs_settings_have_the_tables_defaults() -> None:
    engine, serve = parse_child_arguments(["-m", "x.gguf"])
    fields = {**vars(serve), **vars(engine), "mmap": engine.use_mmap, "mlock": engine.use_mlock}
    for option in MODEL_OPTIONS:
        if option.key != "reranking":  # not a field: it makes pooling rank
            assert fields[option.key] == option.default, option.key
    assert engine == EngineOptions(model_path=Path("x.gguf"))
    assert serve == ServeOptions()


def test_the_childs_choices_are_the_tables() -> None:
    choices = {option.key: set(option.choices) for option in MODEL_OPTIONS}
    assert choices["reasoning_format"] == {value.value for value in ReasoningFormat}
    assert choices["pooling"] == {value.value for value in Pooling}
    assert choices["flash_attn"] == {value.value for value in FlashAttention}
    from router.child.llama_engine import _CACHE_TYPES

    assert choices["cache_type_k"] == choices["cache_type_v"] == set(_CACHE_TYPES)


@pytest.mark.parametrize("option", MODEL_OPTIONS, ids=lambda option: option.key)
def test_confd_args_accept_the_tables_values_and_refuse_others(option: ModelOption) -> None:
    _, value = sample(option)
    assert checked_child_options({option.key: value}) == {option.key: value}
    with pytest.raises(ConfigInvalid):
        checked_child_options({option.key: [value]})
    if option.bounds is not None:
        with pytest.raises(ConfigInvalid, match="out of range"):
            checked_child_options({option.key: option.bounds[1] + 1})


def test_confd_refuses_an_unknown_key_naming_the_nearest() -> None:
    with pytest.raises(ConfigInvalid, match="did you mean 'cache_type_k'"):
        checked_child_options({"cache_type_kk": "q8_0"})


def test_the_extra_args_allowlist_is_the_tables_client_options() -> None:
    expected = {flag: o.key for o in MODEL_OPTIONS if o.is_client_settable for flag in o.flags}
    assert expected == ALLOWED_EXTRA_ARGS
    limits = ExtraArgLimits(max_ctx=4096, max_threads=4)
    for option in MODEL_OPTIONS:
        words, _ = sample(option)
        if option.is_client_settable:
            assert checked_extra_args([option.flags[0], *words], limits)
        else:
            with pytest.raises(InvalidField):
                checked_extra_args([option.flags[0], words[0] if words else "1"], limits)


def test_the_help_names_every_flag() -> None:
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    for text in (serve.format_help(), child_parser().format_help()):
        for option in MODEL_OPTIONS:
            for flag in option.flags:
                assert f"{flag} " in text or f"{flag}\n" in text or f"{flag}," in text, flag
    for flag in COMPAT_FLAGS:
        assert flag.flags[-1] in serve.format_help()


def test_the_docs_table_is_the_tables() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert options_table.with_docs_table(text) == text, "run: python -m router.options_table"
    for option in MODEL_OPTIONS:
        assert f"| `{option.key}` |" in text


def test_ctk_is_the_cache_type_never_c_with_a_value() -> None:
    args = serve_args("-ctk", "q8_0", "-ctv", "q4_0")
    assert child_options_from(args) == {"cache_type_k": "q8_0", "cache_type_v": "q4_0"}
    engine, _ = parse_child_arguments(["-m", "x.gguf", "-ctk", "q8_0"])
    assert (engine.cache_type_k, engine.ctx_size) == ("q8_0", 4096)


def test_llama_cpps_test_harness_command_line_is_accepted() -> None:
    args = serve_args(
        "--port", "0", "--temp", "0.8", "--seed", "42", "--host", "127.0.0.1",
        "--batch-size", "32", "--no-slots", "--ctx-size", "512", "--parallel", "2",
        "--n-predict", "16", "--no-jinja", "--offline", "--models-max", "2",
        "--no-models-autoload", "--api-key", "k", "--jinja", "--no-webui", "--metrics",
        "--threads-http", "4", "-a", "alias", "--timeout", "30",
    )  # fmt: skip
    assert child_options_from(args) == {"seed": 42, "batch_size": 32, "ctx_size": 512,
                                        "parallel": 2, "temp": 0.8, "n_predict": 16}  # fmt: skip
    assert (args.models_max, args.models_autoload, args.timeout) == (2, False, 30)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--cache-reuse", "256"], "unsupported option --cache-reuse"),
        (["-ctx", "512"], "unsupported option -ctx; the nearest supported option is --ctx-size"),
        (["--jinga"], "the nearest supported option is --jinja"),
        (["--ctx", "512"], "nearest supported option is --ctx-size"),  # no abbreviations
    ],
)
def test_an_unsupported_option_is_refused_by_name_with_the_nearest(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    for command in (["serve", "--models-dir", "."], ["child", "-m", "x.gguf"]):
        if command[0] == "child":
            with pytest.raises(SystemExit) as stopped:
                parse_child_arguments([*command[1:], *argv])
        else:
            with pytest.raises(SystemExit) as stopped:
                main([*command, *argv])
        assert stopped.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines == [lines[-1]] and message in lines[-1], lines


def test_an_unsupported_option_is_one_line_from_the_command() -> None:
    line = one_line_error("serve", "--models-dir", ".", "--cache-reuse", "256")
    assert "unsupported option --cache-reuse" in line


def test_llama_arg_variables_set_the_defaults_below_the_flags(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLAMA_ARG_CTX_SIZE", "1024")
    monkeypatch.setenv("LLAMA_ARG_CACHE_TYPE_K", "q8_0")
    monkeypatch.setenv("LLAMA_ARG_EMBEDDINGS", "true")
    assert child_options_from(serve_args("-c", "2048")) == {
        "ctx_size": 2048, "cache_type_k": "q8_0", "embeddings": True,
    }  # fmt: skip


def test_llama_servers_router_variables_are_read_below_ours(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLAMA_ARG_MODELS_MAX", "7")
    monkeypatch.setenv("LLAMA_ARG_MODELS_AUTOLOAD", "disabled")
    monkeypatch.setenv("LLAMA_API_KEY", "k1,k2")
    monkeypatch.setenv("LLAMA_ARG_HOST", "127.0.0.2")
    monkeypatch.setenv("LLAMA_ROUTER_HOST", "127.0.0.3")
    args = serve_args()
    assert (args.models_max, args.models_autoload) == (7, False)
    assert (args.api_key, args.host) == (["k1", "k2"], "127.0.0.3")


def test_a_bad_llama_arg_value_is_one_line() -> None:
    line = one_line_error("serve", "--models-dir", ".", env={"LLAMA_ARG_CTX_SIZE": "big"})
    assert "LLAMA_ARG_CTX_SIZE='big'" in line


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_serve_listens_on_llama_arg_port(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "LLAMA_ARG_PORT": str(port), "PYTHONUNBUFFERED": "1"}
    env.pop("LLAMA_ROUTER_PORT", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "router", "serve", "--models-dir", str(tmp_path), "--spares", "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
        start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.extend(raw.decode(errors="replace") for raw in process.stderr or ()),
        daemon=True,
    )
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not any("listening on " in line for line in lines):
            assert process.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.05)
        response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10)
        assert response.status_code == 200
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        reader.join(timeout=5)


def test_cache_types_reach_llama_cpp(tmp_path: Path) -> None:
    """llama.cpp refuses a quantized V cache without flash attention: proof that -ctv got
    there; f32, which any head size can hold, loads and answers."""
    model = write_tiny_llama(tmp_path / "m.gguf")
    code, stderr = run_child_to_exit(model, "-c", "512", "-ctv", "q8_0", "-fa", "off")
    assert code == 1
    assert "quantized V cache requires flash_attn" in stderr
    with running_child(model, "-c", "512", "-ctk", "f32", "-ctv", "f32") as child:
        response = httpx.post(
            f"{child.base_url}/v1/completions", json={"prompt": "a", "max_tokens": 2}, timeout=30
        )
        assert response.status_code == 200, response.text


def test_a_command_model_never_sees_llama_servers_names_for_the_routers_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A llama-server run as a 'command' model would take LLAMA_API_KEY as its own key."""
    from tests.processes import running_router
    from tests.test_children_safety import _command_model

    site = _command_model(tmp_path, "{port}")
    monkeypatch.setenv("LLAMA_API_KEY", "k-user")
    monkeypatch.setenv("LLAMA_ARG_MODELS_MAX", "3")
    with running_router(site / "models", "--conf-dir", str(site / "conf.d")) as router:
        response = httpx.get(
            f"{router.base_url}/env",
            params={"model": "stub"},
            headers={"Authorization": "Bearer k-user"},  # LLAMA_API_KEY is the router's key
            timeout=30,
        )
        assert response.status_code == 200, response.text
        env = response.json()["env"]
    assert "LLAMA_API_KEY" not in env and "LLAMA_ARG_MODELS_MAX" not in env


def test_a_confd_mmproj_is_found_beside_the_file_and_reaches_the_childs_argv(
    tmp_path: Path,
) -> None:
    from router.child_options import child_argv
    from router.models.confd import read_model_file
    from router.spec import ModelSpec

    (tmp_path / "m.gguf").write_bytes(b"")
    (tmp_path / "proj.gguf").write_bytes(b"")
    good = tmp_path / "good.toml"
    good.write_text('model = "m.gguf"\n[args]\nmmproj = "proj.gguf"\n')
    spec = read_model_file(good)
    assert isinstance(spec, ModelSpec)
    assert child_argv(spec.args) == ["--mmproj", str(tmp_path / "proj.gguf")]
    bad = tmp_path / "bad.toml"
    bad.write_text('model = "m.gguf"\n[args]\nmmproj = "absent.gguf"\n')
    problem = read_model_file(bad)
    assert not isinstance(problem, ModelSpec)
    assert "no such file" in problem.message and problem.line == 3


def test_llama_arg_models_dir_is_one_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMA_ARG_MODELS_DIR", "/srv/models,v2")
    args = build_parser().parse_args(["serve"])
    assert args.models_dir == [Path("/srv/models,v2")]
