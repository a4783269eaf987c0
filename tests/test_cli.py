"""The command line refuses bad settings with one line and exit status 2, never a traceback.

Every case here stops before the router would start, so it runs in-process.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from router.cli import main


@pytest.fixture(autouse=True)
def _in_an_empty_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Away from the repository's own conf.d and router.toml."""
    monkeypatch.chdir(tmp_path)


def refusal(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as stopped:
        main(["serve", "--models-dir", ".", *argv])
    assert stopped.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('models_max = "x"', "[router] models_max must be an integer"),
        ("host = 5", "[router] host must be a string"),
        ("api_key = [1]", "[router] api_key must be a string or a list of strings"),
        ("models_autoload = 1", "[router] models_autoload must be true or false"),
        ('stop_timeout = "soon"', "[router] stop_timeout must be a number"),
        ('command = "child"', "[router] has no setting 'command'"),
    ],
)
def test_router_file_values_of_the_wrong_type_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, message: str
) -> None:
    config = tmp_path / "router.toml"
    config.write_text(f"[router]\n{line}\n")
    assert message in refusal(capsys, "--config", str(config))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--allowed-host", "http://router.lan"], "is not a host name or an IP address"),
        (["--allowed-host", "router.lan:8080"], "without scheme or port"),
        (["--api-key", "clé"], "printable ASCII"),
        (["--admin-api-key", "a\tb"], "printable ASCII"),
        (["--admin-api-key-file", "/nonexistent/keys"], "--admin-api-key-file"),
    ],
)
def test_unusable_access_settings_are_refused(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert message in refusal(capsys, *argv)


def one_line_error(*argv: str, env: dict[str, str] | None = None) -> str:
    """Run ``llama-router ARGV`` as a process that must stop at once with exit status 2 and
    one error line (no traceback); return that line."""
    import os
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "router", *argv],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, done.stderr
    return errors[0]


def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line_error("serve", "--models-dir", str(tmp_path), "--port", str(port))
    assert f"cannot listen on 127.0.0.1 port {port}" in line
    assert "--port" in line


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("LLAMA_ROUTER_PORT", "eighty", "LLAMA_ROUTER_PORT='eighty' is not a whole number"),
        ("LLAMA_ROUTER_TIMEOUT", "soon", "LLAMA_ROUTER_TIMEOUT='soon' is not a number"),
        ("LLAMA_ROUTER_MODELS_AUTOLOAD", "maybe", "LLAMA_ROUTER_MODELS_AUTOLOAD='maybe'"),
    ],
)
def test_a_bad_environment_value_is_one_line(
    tmp_path: Path, name: str, value: str, message: str
) -> None:
    assert message in one_line_error("serve", "--models-dir", str(tmp_path), env={name: value})


def test_a_missing_conf_dir_is_one_line(tmp_path: Path) -> None:
    line = one_line_error("serve", "--models-dir", str(tmp_path), "--conf-dir", "nowhere")
    assert "--conf-dir nowhere is not a folder" in line


def test_exposure_is_judged_by_the_address_bound_not_the_name(tmp_path: Path) -> None:
    from router.errors import ExposureRefused
    from router.server import check_exposure
    from router.settings import RouterSettings

    settings = RouterSettings(host="router.localhost", allow_config_writes=True)
    check_exposure(settings, bound_address="127.0.0.1")
    with pytest.raises(ExposureRefused):
        check_exposure(settings, bound_address="192.0.2.10")  # the name resolved elsewhere
