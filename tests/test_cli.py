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
