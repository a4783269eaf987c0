"""``llama-router ps``, ``load``, ``unload``, ``pin``, ``unpin``, ``logs`` and ``reload``: a
person's commands for a router that is running, over the same HTTP API every other client uses
(Ollama's ``ollama ps`` and ``ollama stop`` are the model). Nothing here runs a model or reads
the router's files.

Where: ``--url``, else ``LLAMA_ROUTER_URL``, else the address ``serve`` binds by the same
``LLAMA_ROUTER_HOST`` and ``LLAMA_ROUTER_PORT`` (an "any address" bind is reached on loopback).
The key: ``LLAMA_ROUTER_API_KEY`` (its first key), else the first key of
``LLAMA_ROUTER_API_KEY_FILE``: never a flag, which other users could read in ``ps``.

Exit status: 0 done; 1 the router refused (its own message is printed) or a load or unload did
not end as asked; 2 no router answered at the URL (``RouterUnreachable``) or a bad flag.

This module imports nothing at import time but the errors (httpx and the router's settings are
imported when a command runs), since ``cli.py`` imports it for every command, the model child's
included, which must not import the router's side (``tests/child/test_imports.py``).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from router.errors import ControlError, RouterRefused, RouterUnreachable

if TYPE_CHECKING:
    import httpx

COMMANDS = ("ps", "load", "unload", "pin", "unpin", "logs", "reload")
REQUEST_TIMEOUT_S = 30.0  # one request's answer (not a wait for a load: see --timeout)
POLL_INTERVAL_S = 0.1  # how often a waiting load or unload reads GET /models
# A load asked of a model that failed before may be refused at once (the router backs off
# after repeated failures) without its status ever moving: this long unmoved, that is the answer.
UNMOVED_AFTER_FAILURE_S = 5.0
RECONNECT_DELAY_S = 0.5  # logs -f: the router cuts off a reader that fell behind; read again


def add_control_commands(commands: Any) -> None:
    """Add the commands to ``commands`` (the ``add_subparsers`` object of ``cli.py``)."""
    from router.settings import RouterSettings

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(
            name, help=help_text, description=help_text[0].upper() + help_text[1:] + "."
        )
        parser.add_argument(
            "--url",
            default=None,
            help="the router's address (default: LLAMA_ROUTER_URL, else http:// and the "
            "LLAMA_ROUTER_HOST and LLAMA_ROUTER_PORT that serve uses); the key comes from "
            "LLAMA_ROUTER_API_KEY or LLAMA_ROUTER_API_KEY_FILE",
        )
        return parser

    ps = command("ps", "list a running router's models: status, process, requests, failures")
    ps.add_argument("--json", action="store_true", help="print GET /models as JSON, for scripts")
    for name, verb in (("load", "load"), ("unload", "unload")):
        waiting = command(name, f"{verb} a model and wait until it is {verb}ed")
        waiting.add_argument("model", help="the model's id or one of its aliases")
        waiting.add_argument(
            "--no-wait", action="store_true", help="return once the router took the request"
        )
        waiting.add_argument(
            "--timeout",
            type=float,
            default=RouterSettings.load_timeout_s,
            help="seconds to wait (default: %(default)g, the router's own --load-timeout)",
        )
        waiting.add_argument("--json", action="store_true", help="print the model's entry")
    for name, what in (
        ("pin", "pin a model: never evicted nor unloaded when idle, until the router restarts"),
        ("unpin", "unpin a model: evicted and unloaded when idle as its settings say"),
    ):
        pinning = command(name, what)
        pinning.add_argument("model", help="the model's id or one of its aliases")
        pinning.add_argument("--json", action="store_true", help="print the router's answer")
    logs = command("logs", "print a model's recent log lines; -f follows them")
    logs.add_argument("model", help="the model's id or one of its aliases")
    logs.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing new lines and status changes until Ctrl-C",
    )
    command("reload", "have the router read --models-dir and conf.d again")


def run_control(args: argparse.Namespace) -> int:
    """Run the control command ``args.command``; a failure is one line on stderr."""
    try:
        with _connect(args.url) as api:
            return _COMMANDS[args.command](api, args)
    except ControlError as exc:
        print(f"llama-router {args.command}: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130  # 128 + SIGINT, as a shell reports it


def default_url() -> str:
    """The address ``serve`` would listen on with the same environment, as a URL to call."""
    from router.cli import _env, _env_int
    from router.settings import RouterSettings

    url = _env("url")
    if url:
        return url
    host = _env("host") or RouterSettings.host
    port = _env_int("port", RouterSettings.port)
    return f"http://{_reachable_host(host)}:{port}"


def _reachable_host(host: str) -> str:
    """``host`` as a client writes it in a URL: an any-address bind is called on loopback."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host
    if address.is_unspecified:
        address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    return f"[{address}]" if address.version == 6 else str(address)


def api_key() -> str | None:
    """The key to send: the first of ``LLAMA_ROUTER_API_KEY`` (``serve`` reads it the same way,
    ``:``-separated), else the first key in the file ``LLAMA_ROUTER_API_KEY_FILE`` names, read
    as ``serve --api-key-file`` reads it."""
    from router.cli import _env, _env_list, _keys_from_file

    keys = _env_list("api-key")
    if keys:
        return keys[0]
    path = _env("api-key-file")
    if not path:
        return None
    reporter = argparse.ArgumentParser(prog="llama-router")
    return _keys_from_file(reporter, "LLAMA_ROUTER_API_KEY_FILE", path)[0]


# ---- talking to the router ------------------------------------------------------------------


class RouterAPI:
    """The router's HTTP API as the commands use it: every failure becomes a ControlError."""

    def __init__(self, client: httpx.Client, url: str) -> None:
        self.client = client
        self.url = url

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON answer of ``method path``, or RouterRefused with the router's message."""
        response = self._send(lambda: self.client.request(method, path, **kwargs))
        return self._json(response, f"{method} {path}")

    def models(self) -> dict[str, Any]:
        answer: dict[str, Any] = self.call("GET", "/models")
        return answer

    def find(self, name: str) -> dict[str, Any] | None:
        """The ``GET /models`` entry of the model called ``name`` (its id or an alias)."""
        for entry in self.models().get("data", []):
            if entry.get("id") == name or name in entry.get("aliases", []):
                found: dict[str, Any] = entry
                return found
        return None

    def entry(self, name: str) -> dict[str, Any]:
        """:meth:`find`, for a model that must be listed."""
        found = self.find(name)
        if found is None:
            raise RouterRefused(f"the router lists no model called {name!r} (llama-router ps)")
        return found

    def event_lines(self, path: str, params: dict[str, str]) -> Iterator[str]:
        """The lines of a Server-Sent Events answer as they come, with no deadline between
        them (a quiet model sends nothing for hours); they end when the stream does, or
        breaks off (the router stopped, or cut off this reader for falling behind)."""
        import httpx

        timeout = httpx.Timeout(REQUEST_TIMEOUT_S, read=None)
        request = self.client.build_request("GET", path, params=params, timeout=timeout)
        response = self._send(lambda: self.client.send(request, stream=True))
        try:
            if response.is_error:
                response.read()
                self._json(response, f"GET {path}")
            yield from response.iter_lines()
        except httpx.TransportError:
            return
        finally:
            response.close()

    def _send(self, send: Callable[[], httpx.Response]) -> httpx.Response:
        import httpx

        try:
            return send()
        except httpx.ConnectError as exc:
            raise RouterUnreachable(
                f"no router answers at {self.url} ({_reason(exc)}); is it running? "
                "--url or LLAMA_ROUTER_URL say where it is"
            ) from None
        except httpx.TransportError as exc:
            raise RouterUnreachable(f"{self.url} did not answer: {_reason(exc)}") from None

    def _json(self, response: httpx.Response, what: str) -> Any:
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.is_error:
            message = _error_message(body)
            if message is None:
                raise RouterUnreachable(
                    f"{what} at {self.url} answered HTTP {response.status_code} without a "
                    "router's error: is it a llama-router?"
                )
            if response.status_code == 401:
                message += " (set LLAMA_ROUTER_API_KEY to the router's key)"
            raise RouterRefused(message)
        if body is None:
            raise RouterUnreachable(f"{what} at {self.url} did not answer JSON: a llama-router?")
        return body


@contextmanager
def _connect(url: str | None) -> Iterator[RouterAPI]:
    """The router's API at ``url`` (default: :func:`default_url`), with the key if one is set."""
    import httpx

    url = (url or default_url()).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise RouterUnreachable(f"--url {url}: give it as http://HOST:PORT")
    key = api_key()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(base_url=url, headers=headers, timeout=REQUEST_TIMEOUT_S) as client:
        yield RouterAPI(client, url)


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _error_message(body: Any) -> str | None:
    """The message of an OpenAI-style error body, if ``body`` is one."""
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) else None


# ---- the commands ---------------------------------------------------------------------------


def _ps(api: RouterAPI, args: argparse.Namespace) -> int:
    models = api.models()
    if args.json:
        print(json.dumps(models, indent=2, ensure_ascii=False))
        return 0
    print(format_table(models, now=time.time()))
    return 0


COLUMNS = ("MODEL", "STATUS", "PID", "IN FLIGHT", "LAST USED", "MEMORY", "REASON")


def _spare_state(spare: dict[str, Any]) -> str:
    if spare.get("is_ready"):
        return "ready"
    return "paused" if spare.get("is_paused") else "starting"


def format_table(models: dict[str, Any], *, now: float) -> str:
    """``GET /models`` as a table, one model a row, then the waiting spares. A column the
    router does not report reads ``-``: a model's ``last_used`` (Unix time) and ``memory``
    (bytes, or ``{"rss": bytes}``), read as the web page reads them."""
    rows = [_model_row(entry, now) for entry in models.get("data", [])]
    rows += [
        [
            "(spare)",
            _spare_state(spare),
            _text(spare.get("pid")),
            "-",
            "-",
            _mib(spare.get("rss_mib")),
            "",
        ]
        for spare in models.get("spares", [])
    ]
    widths = [max(len(row[i]) for row in [list(COLUMNS), *rows]) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
             for row in [list(COLUMNS), *rows]]  # fmt: skip
    return "\n".join(line.rstrip() for line in lines)


def _model_row(entry: dict[str, Any], now: float) -> list[str]:
    status = entry.get("status", {})
    value = status.get("value", "?")
    if status.get("failed") and value == "unloaded":
        value = "failed"
    if entry.get("pinned"):
        value += ",pinned"
    reason = status.get("error") or status.get("config_error") or ""
    last_used = entry.get("last_used", status.get("last_used"))
    memory = entry.get("memory", status.get("memory"))
    if isinstance(memory, dict):
        memory = memory.get("rss", memory.get("bytes", memory.get("total")))
    return [
        str(entry.get("id", "?")),
        value,
        _text(status.get("pid")),
        _text(entry.get("in_flight")),
        _ago(last_used, now),
        _mib(memory / 2**20 if isinstance(memory, int | float) else None),
        " ".join(str(reason).split()),  # one line, however many the child's message had
    ]


def _text(value: Any) -> str:
    return "-" if value is None else str(value)


def _mib(value: Any) -> str:
    return f"{value:.0f} MiB" if isinstance(value, int | float) else "-"


def _ago(when: Any, now: float) -> str:
    """A Unix time as "12s ago", "5m ago", "3h ago", "2d ago"; ``-`` when never used."""
    if not isinstance(when, int | float) or when <= 0:
        return "-"
    seconds = max(0, int(now - when))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _load_or_unload(api: RouterAPI, args: argparse.Namespace) -> int:
    is_load = args.command == "load"
    # Read before asking, to tell a new failure from an old one; an unknown name is left to
    # the router, whose answer says what it knows.
    before = {} if args.no_wait else api.find(args.model) or {}
    api.call("POST", f"/models/{args.command}", json={"model": args.model})
    if args.no_wait:
        print(f"{args.model}: {args.command} requested")
        return 0
    entry = _wait(api, args.model, before, is_load=is_load, timeout_s=args.timeout)
    if args.json:
        print(json.dumps(entry, indent=2, ensure_ascii=False))
    else:
        pid = entry["status"].get("pid")
        print(f"{entry['id']}: {entry['status']['value']}" + (f" (pid {pid})" if pid else ""))
    return 0


def _wait(
    api: RouterAPI, name: str, before: dict[str, Any], *, is_load: bool, timeout_s: float
) -> dict[str, Any]:
    """Read ``GET /models`` until the model is loaded (or unloaded); its entry then.

    A load fails when the model ends unloaded with a failure that is new (it went through
    loading, or its error changed), or when one from before stays unmoved for
    ``UNMOVED_AFTER_FAILURE_S`` (the router refused to start it yet: its backoff).
    """
    goal = "loaded" if is_load else "unloaded"
    old_failure = _failure(before)
    has_moved = False
    start = time.monotonic()
    while True:
        entry = api.entry(name)
        status = entry.get("status", {})
        value = status.get("value")
        if value == goal:
            return entry
        if value in ("loading", "unloading"):
            has_moved = True
        elif is_load and value == "unloaded" and status.get("failed"):
            failure = _failure(entry)
            waited = time.monotonic() - start
            if has_moved or failure != old_failure or waited > UNMOVED_AFTER_FAILURE_S:
                raise RouterRefused(f"{entry['id']} did not load: {_describe(status)}")
        elif value not in ("unloaded", "loaded"):
            raise RouterRefused(f"{entry['id']} cannot be {goal}: {_describe(status)}")
        if time.monotonic() - start > timeout_s:
            raise RouterRefused(
                f"{entry['id']} is still {value} after {timeout_s:g}s (--timeout); "
                f"'llama-router ps' shows how it goes on"
            )
        time.sleep(POLL_INTERVAL_S)


def _failure(entry: dict[str, Any]) -> tuple[Any, ...] | None:
    status = entry.get("status", {})
    return (status.get("exit_code"), status.get("error")) if status.get("failed") else None


def _describe(status: dict[str, Any]) -> str:
    reason = status.get("error") or status.get("config_error") or status.get("value", "?")
    exit_code = status.get("exit_code")
    return f"{reason} (exit code {exit_code})" if exit_code is not None else str(reason)


def _logs(api: RouterAPI, args: argparse.Namespace) -> int:
    """Print the model's recent lines; with ``--follow``, then every new line and status change.

    Following subscribes first and reads the recent lines after (the stream's first line says
    it is subscribed), so that no line is lost between the two: one printed just then may
    show twice. A stream the router cuts off (this reader fell behind) is opened again.
    """
    if not args.follow:
        _print_recent(api, args.model)
        return 0
    is_terminal = sys.stdout.isatty()
    is_first = True
    while True:
        for line in api.event_lines("/models/sse", {"logs": "1", "model": args.model}):
            if is_first:
                is_first = False
                print(f"-- following {args.model} (Ctrl-C ends)", file=sys.stderr, flush=True)
                _print_recent(api, args.model)
            if line.startswith("data:"):
                _print_event(line[len("data:") :].strip(), is_terminal=is_terminal)
        print("-- the stream ended; opening it again", file=sys.stderr, flush=True)
        time.sleep(RECONNECT_DELAY_S)


def _print_recent(api: RouterAPI, model: str) -> None:
    for line in api.call("GET", "/models/logs", params={"model": model}).get("lines", []):
        print(line, flush=True)


def _print_event(data: str, *, is_terminal: bool) -> None:
    """One event of ``/models/sse``: a log line as it is, anything else marked as the router's
    (``--`` and, on a terminal, dimmed), so that it is not taken for the model's own words."""
    try:
        event = json.loads(data)
    except ValueError:
        return
    if not isinstance(event, dict):
        return
    payload = event.get("data")
    if not isinstance(payload, dict):
        payload = {}
    if event.get("event") == "log":
        print(payload.get("line", ""), flush=True)
        return
    details = " ".join(f"{key}={value}" for key, value in payload.items())
    note = f"-- {event.get('model', '?')}: {event.get('event', '?')} {details}".rstrip()
    print(f"\033[2m{note}\033[0m" if is_terminal else note, flush=True)


def _pin(api: RouterAPI, args: argparse.Namespace) -> int:
    """``POST /models/pin``: kept by the router until it restarts (or the model's conf.d file
    changes its ``pinned``), never written to a file."""
    answer = api.call(
        "POST", "/models/pin", json={"model": args.model, "pinned": args.command == "pin"}
    )
    if args.json:
        print(json.dumps(answer, indent=2, ensure_ascii=False))
    else:
        how = "pinned" if answer.get("pinned") else "not pinned"
        print(f"{answer.get('model', args.model)}: {how}")
    return 0


def _reload(api: RouterAPI, args: argparse.Namespace) -> int:
    api.call("POST", "/models/reload", json={})
    models = api.models()
    print(f"the router lists {len(models.get('data', []))} models (llama-router ps shows them)")
    return 0


_COMMANDS: dict[str, Callable[[RouterAPI, argparse.Namespace], int]] = {
    "ps": _ps,
    "load": _load_or_unload,
    "unload": _load_or_unload,
    "pin": _pin,
    "unpin": _pin,
    "logs": _logs,
    "reload": _reload,
}
