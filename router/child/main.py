"""Run one model's server: load, listen, tell the parent, serve until told to stop.

Exit status: 0 after a graceful stop (or when the parent died), 1 when the model could not
be loaded or the address not bound (after one line on stderr that says why, and the same
reason on the lifeline's failed line), 2 for bad command-line options.

The child imports only ``router.child``, the modules it shares with the router (errors,
lifeline, the HTTP server) and ``router.version``: never pluggy, the router's settings or
conf.d, so that it starts fast and the router's configuration cannot break it.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import setproctitle
import trio
from hypercorn.config import Config, Sockets
from quart_trio import QuartTrio

from router.child.app import create_app
from router.child.fast_path import with_fast_path
from router.child.llama_engine import LlamaCppEngine
from router.child.parsing import RequestDefaults
from router.child.service import ModelService
from router.edge import lean_http
from router.edge.web import MAX_BODY_BYTES
from router.errors import ModelLoadFailed
from router.model_options import (
    EngineOptions,
    ServeOptions,
    options_from_json,
    parse_child_arguments,
)
from router.processes.lifeline import ChildLifeline

log = logging.getLogger("router.child")

DEFAULT_GRACEFUL_TIMEOUT_S = 10.0
GRACE_FOR_ERROR_BODIES_S = 1.0
GRACE_FOR_LAST_BYTES_S = 0.2
MAX_CONNECTIONS = 256  # only the router connects: its pool (128 in use, 32 idle), health checks
SEND_TIMEOUT_S = 600.0  # the router reads what it asked for; this only bounds a broken one
# What ``ps -ef``, ``top -c`` and htop show for a child: the model it serves, or that it waits.
PROCESS_TITLE = "llama-router child: {model}"
SPARE_MODEL = "(spare)"


def main(argv: Sequence[str]) -> int:
    """``llama-router child ARGV``: the router's command line hands over what follows ``child``."""
    if list(argv) == ["--spare"]:
        return run_spare()
    engine_options, serve_options = parse_child_arguments(argv)
    return run_child(engine_options, serve_options)


# How long a thread that holds the GIL keeps it from one that waits (Python's default: 5 ms).
# The event loop and the decode thread hand work to each other on every request and every
# step; at 5 ms, a hand-over that waits out the interval adds 5 ms to a 1-token answer.
SWITCH_INTERVAL_S = 0.0005


def run_child(
    engine_options: EngineOptions,
    serve_options: ServeOptions,
    lifeline: ChildLifeline | None = None,
) -> int:
    """Serve one model until stopped; the exit status is the return value (see above)."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    if lifeline is None:
        lifeline = ChildLifeline.from_environment()
    _show_in_ps(serve_options.alias or engine_options.model_path.stem)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        return trio.run(serve_model, engine_options, serve_options, lifeline)
    except KeyboardInterrupt:
        return 0
    except Exception as exc:
        # A bug, not a bad model: the traceback follows on stderr; the parent hears of it now.
        if lifeline is not None and not lifeline.has_reported:
            lifeline.announce_failure("internal", _describe_bug(exc))
        raise


def run_spare() -> int:
    """``llama-router child --spare``: wait, with everything imported, for a model to serve.

    The spare says so on its lifeline (the spare line), then the router writes ``assign
    {"engine": {...}, "serve": {...}}`` (the parsed options, ``options_to_json``) on its stdin
    when a load comes; the spare then serves that model
    exactly as ``child`` would. A stop that asks for it (``stop TIMEOUT_S spare``) ends with
    the model freed, the server closed and the spare line again: the same process waits for
    the next model. End-of-file instead of an assignment means the router stopped (or died):
    exit at once.
    """
    lifeline = ChildLifeline.from_environment()
    if lifeline is None:
        print("error: --spare is for the router's own use (it needs a lifeline)", file=sys.stderr)
        return 2
    gc.collect()
    gc.freeze()  # what the imports made lives as long as the process: later collections skip it
    while True:
        _show_in_ps(SPARE_MODEL)
        lifeline.announce_spare()
        line = _read_line()
        if not line.startswith(b"assign "):
            return 0
        engine_options, serve_options = options_from_json(line[len(b"assign ") :])
        status = run_child(engine_options, serve_options, lifeline)
        if status != 0 or not lifeline.is_back_to_spare_asked:
            return status
        _give_memory_back()


def _show_in_ps(model: str) -> None:
    """Name this process after its model: a command line that says ``python -m router child
    --spare`` for every child tells an operator nothing about which one holds which model,
    and a spare's stays that way after it is handed one.

    ``SPT_NOENV``: the title takes only the command line's own bytes (a long model name is cut
    there), never the environment's, so ``/proc/PID/environ`` still says what the child runs
    with (an operator's check, and the router's tests of what reaches a child)."""
    os.environ["SPT_NOENV"] = "1"
    setproctitle.setproctitle(PROCESS_TITLE.format(model=model))


def _give_memory_back() -> None:
    """Return what the last model left behind to the system before waiting for the next one:
    the model's Python objects (cycles included) and the C heap's free pages. llama.cpp has
    freed the weights and unmapped the file already (``engine.close``); with the imports
    frozen (``gc.freeze``), the collection only walks what the last model made (< 1 ms)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)  # glibc only; elsewhere the heap keeps its pages


def _read_line() -> bytes:
    """One line from stdin, read a byte at a time: what follows it stays for the lifeline."""
    line = b""
    while not line.endswith(b"\n"):
        byte = os.read(0, 1)
        if not byte:
            return b""
        line += byte
    return line


async def serve_model(
    engine_options: EngineOptions, serve_options: ServeOptions, lifeline: ChildLifeline | None
) -> int:
    """Load the model and serve it until a stop command, SIGTERM or SIGINT.

    Cancellation: stops serving at once (running requests are cancelled) and frees the model.
    """
    watch_parent_scope = trio.CancelScope()
    stopped_while_loading = trio.Event()
    async with trio.open_nursery() as nursery:
        if lifeline is not None:
            # Watch the parent from the start: if it dies while we load, we exit at once;
            # if it asks us to stop, we do so as soon as the load is over.
            nursery.start_soon(
                _watch_parent, lifeline, watch_parent_scope, lambda _: stopped_while_loading.set()
            )
        try:
            engine = await LlamaCppEngine.load(engine_options)
        except ModelLoadFailed as exc:
            _report_failure(lifeline, exc.kind, exc.message)
            watch_parent_scope.cancel()
            return 1
        try:
            watch_parent_scope.cancel()
            if stopped_while_loading.is_set():
                return 0
            async with engine.decoding():
                return await _serve_loaded(engine, serve_options, lifeline)
        finally:
            engine.close()


async def _serve_loaded(
    engine: LlamaCppEngine,
    serve_options: ServeOptions,
    lifeline: ChildLifeline | None,
) -> int:
    model_id = serve_options.alias or Path(engine.info.model_path).stem
    defaults = RequestDefaults(
        temperature=serve_options.temp,
        max_tokens=None if serve_options.n_predict < 0 else serve_options.n_predict,
    )
    service = ModelService(engine, max_queue=serve_options.max_queue, request_defaults=defaults)
    app = create_app(service, model_id=model_id, api_key=serve_options.api_key)
    config = Config()
    config.graceful_timeout = DEFAULT_GRACEFUL_TIMEOUT_S
    config.keep_alive_timeout = 75
    try:
        sockets = _listen(serve_options)
    except (OSError, OverflowError) as exc:
        reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
        _report_failure(
            lifeline, "listen_error", f"cannot listen on {_where(serve_options)}: {reason}"
        )
        return 1
    try:
        return await _serve_on(engine, service, app, config, sockets, serve_options, lifeline)
    finally:
        _close_listener(sockets, serve_options)


def _close_listener(sockets: Sockets, options: ServeOptions) -> None:
    """Close the listening socket and remove its file: a process that goes back to being a
    spare keeps neither (the next model's child binds the path afresh)."""
    for sock in sockets.insecure_sockets:
        sock.close()
    if options.unix_socket is not None:
        with contextlib.suppress(OSError):
            if options.unix_socket.is_socket():
                options.unix_socket.unlink()


async def _serve_on(
    engine: LlamaCppEngine,
    service: ModelService,
    app: QuartTrio,
    config: Config,
    sockets: Sockets,
    serve_options: ServeOptions,
    lifeline: ChildLifeline | None,
) -> int:
    model_id = serve_options.alias or Path(engine.info.model_path).stem
    stop_requested = trio.Event()
    state = app.extensions["llama_router_state"]

    async def stop_when_idle(timeout_s: float) -> None:
        # Hypercorn's graceful shutdown would also wait for idle keep-alive connections (the
        # router keeps some open) until its timeout; so we wait for our own requests to end,
        # then give Hypercorn only the short grace needed to send error bodies.
        with trio.move_on_after(timeout_s + GRACE_FOR_ERROR_BODIES_S) as waiting:
            await service.admission.wait_idle()
        # Cut requests need time to send their error bodies; finished ones only their last bytes.
        config.graceful_timeout = (
            GRACE_FOR_ERROR_BODIES_S if waiting.cancelled_caught else GRACE_FOR_LAST_BYTES_S
        )
        stop_requested.set()

    def request_stop(timeout_s: float) -> None:
        if not state["is_stopping"]:
            log.info("stopping: finishing running requests (up to %gs)", timeout_s)
            state["is_stopping"] = True
            service.stop_within(timeout_s)
            nursery.start_soon(stop_when_idle, timeout_s)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signals, request_stop)

        async def serve(task_status: trio.TaskStatus[None]) -> None:
            await lean_http.serve(
                with_fast_path(app, service, model_id=model_id, api_key=serve_options.api_key),
                config,
                sockets.insecure_sockets[0],
                max_connections=MAX_CONNECTIONS,
                max_body_bytes=MAX_BODY_BYTES,
                send_timeout_s=SEND_TIMEOUT_S,
                shutdown_trigger=stop_requested.wait,
                task_status=task_status,
            )
            nursery.cancel_scope.cancel()

        await nursery.start(serve)
        address = _address(serve_options, sockets)
        info = engine.info
        log.info(
            "serving %s (%s, n_ctx %d, %d slot(s), %d threads) at %s",
            model_id,
            info.model_path,
            info.n_ctx,
            info.total_slots,
            info.n_threads,
            address,
        )
        if lifeline is not None:
            lifeline.announce_ready(address)
            nursery.start_soon(_watch_parent, lifeline, trio.CancelScope(), request_stop)
    return 0


def _report_failure(lifeline: ChildLifeline | None, kind: str, message: str) -> None:
    """Say why we cannot serve: one line on stderr, and the failed line to the parent."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    if lifeline is not None:
        lifeline.announce_failure(kind, message)


def _describe_bug(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return f"unexpected {type(exc).__name__}: {exc} (the traceback is on the child's stderr)"


async def _watch_parent(
    lifeline: ChildLifeline, scope: trio.CancelScope, request_stop: Callable[[float], None]
) -> None:
    with scope:
        await lifeline.obey_parent(request_stop)


async def _stop_on_signals(request_stop: Callable[[float], None]) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as signals:
        async for _ in signals:
            request_stop(DEFAULT_GRACEFUL_TIMEOUT_S)


def _listen(options: ServeOptions) -> Sockets:
    if options.unix_socket is not None:
        sock = _unix_socket(options.unix_socket)
    else:
        family = socket.AF_INET6 if ":" in options.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((options.host, options.port))
    sock.listen(1024)
    sock.setblocking(False)
    return Sockets(secure_sockets=[], insecure_sockets=[sock], quic_sockets=[])


def _where(options: ServeOptions) -> str:
    if options.unix_socket is not None:
        return f"unix:{options.unix_socket}"
    return (
        f"[{options.host}]:{options.port}"
        if ":" in options.host
        else f"{options.host}:{options.port}"
    )


def _unix_socket(path: Path) -> socket.socket:
    """A Unix socket at ``path`` that only our user can connect to (mode 0600 from birth)."""
    if path.is_socket():
        path.unlink()  # a stale socket from a previous run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    return sock


def _address(options: ServeOptions, sockets: Sockets) -> str:
    sock = sockets.insecure_sockets[0]
    if options.unix_socket is not None:
        return f"unix:{options.unix_socket}"
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
