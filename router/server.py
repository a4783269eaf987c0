"""Run the router: one Trio program that owns the HTTP server and every child.

Shutdown (SIGINT, SIGTERM): the HTTP server stops accepting and lets running requests finish
(``graceful_timeout_s``); then every child gets the graceful stop command, SIGTERM and SIGKILL
in turn (``supervisor.py``); the router returns only when all of them have exited, and removes
its private runtime directory.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import trio
from hypercorn.config import Config
from quart_trio import QuartTrio

from router.default_plugins import default_plugins
from router.edge import lean_http
from router.edge.access import is_loopback
from router.edge.access_log import log_request
from router.edge.app import create_app
from router.edge.fast_path import with_fast_path
from router.edge.metrics import RouterMetrics
from router.edge.observe import RequestRecord, observed
from router.errors import CannotListen, ExposureRefused, PluginFailed, StartupError
from router.hooks.plugin_types import PluginContext
from router.hooks.plugins import (
    Plugins,
    call_each,
    call_each_now,
    load_plugins,
)
from router.logs import configure_logging
from router.models.catalog import ModelFolders, single_model_spec
from router.models.confd import scan_conf_dir
from router.models.downloads import Downloads, download_at_startup
from router.models.hf_cache import cache_dir
from router.models.pool import ModelPool
from router.models.presets import catalog_with_presets
from router.models.remote import RemoteUpstreams
from router.models.watch import ConfDirWatcher
from router.processes.supervisor import Supervisor, SupervisorSettings
from router.settings import RouterSettings
from router.spec import ModelSpec

log = logging.getLogger("router")


def run_router(settings: RouterSettings) -> int:
    """The ``llama-router serve`` command."""
    configure_logging(settings.log_format, settings.log_file, settings.verbosity)
    try:
        trio.run(serve_router, settings)
    except (StartupError, ExceptionGroup) as exc:
        startup_error = _startup_error(exc)
        if startup_error is None:
            raise
        print(f"llama-router: error: {startup_error.message}", file=sys.stderr)
        return 2
    return 0


def check_exposure(settings: RouterSettings, *, bound_address: str) -> None:
    """Refuse config writes that anyone on the network could make; warn of an open router.

    Config writes may add a ``command`` model or ``[env] LD_PRELOAD``: running any program as
    the router's user. Without ``--admin-api-key`` they are allowed only on a loopback address
    (a plugin's keys do not count: an installed plugin may authenticate no one).
    ``bound_address`` is the IP address ``--host`` bound to.
    """
    if is_loopback(bound_address):
        return
    if settings.allow_config_writes and not settings.admin_api_keys:
        raise ExposureRefused(
            f"--allow-config-writes on --host {settings.host} lets anyone who reaches it run "
            "programs as this user: set --admin-api-key (or --admin-api-key-file), or bind "
            "127.0.0.1"
        )
    if not (settings.api_keys or settings.admin_api_keys):
        log.warning(
            "no --api-key on --host %s: unless a plugin checks keys, anyone who can reach "
            "this address may use every model",
            settings.host,
        )


async def serve_router(
    settings: RouterSettings, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve until SIGINT or SIGTERM; ``task_status.started`` gets the listening address.

    Raises ExposureRefused, before anything starts, for settings unsafe to serve with.

    Cancellation: stops serving and stops every child (gracefully, then by force) first.
    """
    sock = _bind(settings.host, settings.port)  # first: a port in use stops nothing else
    try:
        # Judged by the address the name bound to, not by its text; before listening.
        check_exposure(settings, bound_address=sock.getsockname()[0])
    except ExposureRefused:
        sock.close()
        raise
    sock.listen(1024)
    plugins = load_router_plugins(settings)
    # The cache is served without --models-dir, as llama-server's router serves it.
    folders = ModelFolders(
        settings.models_dirs,
        cache_dir(),
        is_cache_served=not settings.models_dirs and settings.model_file is None,
        single_model=None
        if settings.model_file is None
        else single_model_spec(settings.model_file, settings.model_alias),
    )
    models_preset = settings.models_preset
    if settings.hf_repo is not None:
        try:
            downloaded_preset = await trio.to_thread.run_sync(
                download_at_startup, settings.hf_repo, folders.cache, abandon_on_cancel=True
            )
        except BaseException:
            sock.close()
            raise
        folders.is_cache_served = True
        models_preset = downloaded_preset or models_preset  # a preset repository's preset
    runtime_dir = Path(tempfile.mkdtemp(prefix="llama-router-"))  # mode 0700: ours alone
    try:
        pool = ModelPool(
            {},
            models_max=settings.models_max,
            slot_timeout_s=settings.slot_timeout_s,
            sleep_idle_s=max(0, settings.sleep_idle_seconds),
            plugins=plugins,
            child_defaults=settings.child_defaults,
            child_options=settings.child_options,
        )

        remotes = RemoteUpstreams(settings.peers, settings.remote_interval_s)

        def relist() -> None:
            confd = scan_conf_dir(settings.conf_dir)
            specs, problems = catalog_with_presets(folders.scan(), models_preset, confd)
            for problem in problems.values():
                log.warning("config: %s", problem)
            specs |= remotes.specs(taken=specs.keys() | problems.keys())
            pool.apply_catalog(specs, problems)

        def rescan() -> None:
            relist()
            remotes.refresh_soon()  # peers listed again, remote servers checked

        def serve_downloaded() -> None:
            folders.is_cache_served = True
            rescan()

        downloads = Downloads(
            folders.cache, pool.events, on_finished=serve_downloaded, listed=lambda: pool.models
        )
        rescan()
        log.info("models: scanned %s", folders.describe())
        log.info("models: %s", ", ".join(sorted(pool.models)) or "none")
        # The chores (closing clients of exited children) outlive the children.
        async with trio.open_nursery() as chores, trio.open_nursery() as children:
            supervisor = Supervisor(
                children,
                SupervisorSettings(
                    runtime_dir=runtime_dir,
                    child_defaults=settings.child_defaults,
                    child_options=settings.child_options,
                    stop_timeout_s=settings.stop_timeout_s,
                    load_timeout_s=settings.load_timeout_s,
                    health_interval_s=settings.health_interval_s,
                    health_misses=settings.health_misses,
                    spares=settings.spares,
                ),
                events=pool,
                adjust_launch=lambda spec, argv, env: _child_launch(plugins, pool, spec, argv, env),
            )
            context = PluginContext(settings, chores, pool.hooks.catalog)
            pool.attach(supervisor, chores, context)
            supervisor.keep_spares()
            await call_each(plugins, "startup", router=context)
            for state in list(pool.models.values()):
                if state.spec.load_on_startup:
                    pool.request_load(state, chores)
            async with trio.open_nursery() as background:
                background.start_soon(pool.run_idle_timers)
                background.start_soon(remotes.run, lambda: pool.models, relist, pool.events)
                background.start_soon(_rescan_on_sighup, rescan)
                downloads.attach(background)  # POST /models: downloads end with the router
                watcher = None
                if settings.conf_dir is not None:
                    watcher = ConfDirWatcher(settings.conf_dir, rescan)
                    background.start_soon(watcher.run)
                app = create_app(
                    pool,
                    settings,
                    plugins,
                    rescan=rescan,
                    spares=supervisor.spare_report,
                    downloads=downloads,
                )
                # Event streams end as shutdown begins: they must not hold it for the grace.
                await _serve_http(settings, sock, app, task_status, on_stop=pool.events.close)
                if watcher is not None:
                    watcher.stop()
                background.cancel_scope.cancel()
            await call_each(plugins, "shutdown", router=context)
            log.info("stopping every model")
            await pool.stop_all()
    finally:
        shutil.rmtree(runtime_dir, ignore_errors=True)
    log.info("stopped")


def _startup_error(exc: BaseException) -> StartupError | None:
    """The StartupError that ``exc`` is or holds (a nursery wraps what its tasks raise)."""
    if isinstance(exc, StartupError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _startup_error(inner)
            if found is not None:
                return found
    return None


def load_router_plugins(settings: RouterSettings) -> Plugins:
    """The plugins the router runs with: the built-in ones (registered here, so that the
    plugin machinery knows nothing of them), installed packages, then ``settings.plugins``.

    Raises PluginLoadError (a StartupError: one line, exit code 2).
    """
    return load_plugins(
        default_plugins(settings),
        entry_points=settings.load_installed_plugins,
        extra=settings.plugins,
    )


async def _rescan_on_sighup(rescan: Callable[[], None]) -> None:
    with trio.open_signal_receiver(signal.SIGHUP) as signals:
        async for _ in signals:
            log.info("SIGHUP: reloading the model list and conf.d")
            rescan()


def _child_launch(
    plugins: Plugins, pool: ModelPool, spec: ModelSpec, argv: list[str], env: dict[str, str]
) -> None:
    state = pool.models.get(spec.id)
    if state is None:
        return
    # A failure is logged with the plugin's name; the model then starts as the router built it.
    with contextlib.suppress(PluginFailed):
        call_each_now(plugins, "child_launch", model=pool.hooks.info(state), argv=argv, env=env)


async def _serve_http(
    settings: RouterSettings,
    sock: socket.socket,
    app: QuartTrio,
    task_status: trio.TaskStatus[str],
    *,
    on_stop: Callable[[], None],
) -> None:
    config = Config()
    config.graceful_timeout = settings.graceful_timeout_s
    config.keep_alive_timeout = 75
    host, port = sock.getsockname()[:2]
    address = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    stop = trio.Event()
    metrics: RouterMetrics = app.extensions["llama_router_metrics"]

    def report(record: RequestRecord) -> None:
        metrics.record_request(record)
        log_request(record)

    async with trio.open_nursery() as nursery:

        async def stop_on_signals() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    log.info("%s: shutting down", signal.Signals(signum).name)
                    stop.set()
                    on_stop()

        nursery.start_soon(stop_on_signals)

        async def serve(task_status: trio.TaskStatus[None]) -> None:
            await lean_http.serve(
                observed(
                    with_fast_path(
                        app,
                        autoload=settings.models_autoload,
                        timeout_s=settings.timeout_s,
                        load_progress=settings.stream_load_progress,
                    ),
                    report,
                ),
                config,
                sock,
                max_connections=settings.max_connections,
                send_timeout_s=settings.timeout_s,
                shutdown_trigger=stop.wait,
                task_status=task_status,
            )
            nursery.cancel_scope.cancel()  # served its last request: stop watching signals

        await nursery.start(serve)
        log.info("llama-router listening on %s", address)
        task_status.started(address)


def _bind(host: str, port: int) -> socket.socket:
    """The router's socket, bound but not yet listening; CannotListen, saying what to do, if
    it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        hint = {
            errno.EADDRINUSE: "another program listens there: stop it, or choose --port",
            errno.EADDRNOTAVAIL: "no interface of this machine has that address: check --host",
            errno.EACCES: "ports below 1024 need privileges: choose --port 1024 or above",
        }.get(exc.errno or 0, "check --host and --port")
        raise CannotListen(f"cannot listen on {host} port {port}: {exc.strerror}; {hint}") from None
    sock.setblocking(False)
    return sock
