"""Downloads into llama.cpp's model cache, with ``huggingface_hub``: ``-hf`` at start-up and
``POST /models`` at run time.

A repository is named ``ORG/REPO[:QUANT]``; its file is chosen as llama.cpp chooses
(``hf_cache.find_best_model``), with its other splits and an ``mmproj`` beside it. What cannot
be downloaded (no such repository, no GGUF for the tag) is known before anything starts, so a
client gets a 400 for it; what fails later is a ``download_failed`` event.

``huggingface_hub`` does the rest as the ``hf`` command does: the hub layout, resuming a
cut transfer (within a download with a Range request, and across tries from the
``.incomplete`` file it left), a progress bar on the terminal. Its blocking calls run in
worker threads (bounded by ``max_at_once``); a thread reports progress and learns of its
cancellation through the progress bar it is given, once per chunk.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from router.errors import InvalidField, SettingsError, Unavailable
from router.models.events import (
    DOWNLOAD_FAILED,
    DOWNLOAD_FINISHED,
    DOWNLOAD_PROGRESS,
    Event,
    EventHub,
)
from router.models.hf_cache import files_of, find_best_model, split_info, split_repo_tag

log = logging.getLogger("router.models.downloads")

PLAN_TIMEOUT_S = 60.0  # how long the hub may take to list a repository's files
PROGRESS_INTERVAL_S = 0.25  # the least time between two download_progress events of a model
# huggingface_hub reads 10 MiB before each progress update; 1 MiB makes progress smoother, a
# cancellation quicker, and lets a cut transfer resume from what arrived (a Range request).
CHUNK_BYTES = 1024 * 1024
CANCELLED = "cancelled"  # download_failed's reason after POST /models/unload
# A repository with this file at its root is a preset (llama.cpp's common/download.cpp): -hf
# downloads that file alone and serves it as --models-preset.
PRESET_FILE = "preset.ini"


@dataclass(frozen=True)
class DownloadPlan:
    """What to fetch for one model: its id in the cache listing and its repository's files."""

    model_id: str  # ORG/REPO:TAG, the tag read from the chosen file's name
    repo: str
    files: tuple[str, ...]
    is_preset: bool = False  # PRESET_FILE alone: a preset repository, which only -hf serves


class _Cancelled(Exception):
    """Raised inside a download's thread, at its next chunk, once it is cancelled."""


def plan_download(requested: str) -> DownloadPlan:
    """The files of ``requested`` (``ORG/REPO[:QUANT]``), from the hub's listing. Blocking.

    Raises InvalidField (400: not a repository name, no such repository, no GGUF for the tag)
    and Unavailable (503: the hub cannot be reached).
    """
    import httpx2  # huggingface_hub's HTTP client
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    try:
        repo, tag = split_repo_tag(requested)
    except ValueError as exc:
        raise InvalidField("model", str(exc)) from None
    try:
        info = huggingface_hub.HfApi().model_info(repo)
    except RepositoryNotFoundError:
        raise InvalidField("model", f"no repository {repo!r} on the hub") from None
    except (HfHubHTTPError, httpx2.HTTPError, OSError) as exc:
        raise Unavailable(f"the hub did not list {repo!r}: {exc}") from None
    names = [sibling.rfilename for sibling in info.siblings or ()]
    if PRESET_FILE in names:
        return DownloadPlan(repo, repo, (PRESET_FILE,), is_preset=True)
    primary = find_best_model(names, tag)
    if primary is None:
        ggufs = ", ".join(n for n in names if n.endswith(".gguf")) or "none"
        wanted = f"tag {tag}" if tag else "model"
        raise InvalidField(
            "model", f"{repo} has no GGUF file for {wanted} (its GGUF files: {ggufs})"
        )
    chosen = split_info(primary)
    model_tag = chosen.tag if chosen is not None and chosen.tag else tag
    return DownloadPlan(f"{repo}:{model_tag}", repo, tuple(files_of(names, primary)))


def fetch(
    plan: DownloadPlan,
    cache: Path,
    progress: Callable[[str, int, int | None], None] | None = None,
) -> list[Path]:
    """Download every file of ``plan`` into ``cache``; blocking; their paths there.
    ``progress(url, done, total)`` runs in this thread at each chunk, and stops the download
    by raising."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.utils.tqdm import tqdm as hub_tqdm

    constants.DOWNLOAD_CHUNK_SIZE = min(constants.DOWNLOAD_CHUNK_SIZE, CHUNK_BYTES)
    paths = []
    for filename in plan.files:
        url = huggingface_hub.hf_hub_url(plan.repo, filename)
        bar: type[hub_tqdm] | None = None
        if progress is not None:
            bar = _reporting_bar(hub_tqdm, url, progress)
        path = huggingface_hub.hf_hub_download(plan.repo, filename, cache_dir=cache, tqdm_class=bar)
        paths.append(Path(path))
    return paths


def _reporting_bar(
    base: type[Any], url: str, progress: Callable[[str, int, int | None], None]
) -> type[Any]:
    """huggingface_hub's own progress bar (drawn on the terminal unless progress bars are
    off), that also tells ``progress`` the bytes done so far."""

    class ReportingBar(base):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.bytes_done = int(kwargs.get("initial") or 0)
            self.bytes_total = kwargs.get("total")

        def update(self, n: float | None = 1) -> bool | None:
            shown = super().update(n)
            self.bytes_done += int(n or 0)
            progress(url, self.bytes_done, self.bytes_total)
            return shown  # type: ignore[no-any-return]

    return ReportingBar


def download_at_startup(requested: str, cache: Path) -> Path | None:
    """``-hf ORG/REPO[:QUANT]``: download it now, the progress bar on the terminal; for a
    preset repository, its preset file (to serve as --models-preset, as llama-server does).
    Blocking. Raises SettingsError (exit code 2) saying why it cannot."""
    try:
        plan = plan_download(requested)
        log.info("downloading %s (%s) into %s", plan.model_id, ", ".join(plan.files), cache)
        paths = fetch(plan, cache)
    except (InvalidField, Unavailable) as exc:
        raise SettingsError(f"-hf {requested}: {exc.message}") from None
    except Exception as exc:
        raise SettingsError(f"-hf {requested}: the download failed: {exc}") from None
    return paths[0] if plan.is_preset else None


@dataclass
class _Download:
    plan: DownloadPlan
    is_cancelled: threading.Event = field(default_factory=threading.Event)


class Downloads:
    """The downloads that ``POST /models`` started: at most one per model, ``max_at_once`` at
    a time, each a task of the nursery given to ``attach`` (the router's background nursery,
    so they end when it stops)."""

    def __init__(
        self,
        cache: Path,
        events: EventHub,
        *,
        on_finished: Callable[[], None],
        listed: Callable[[], Collection[str]],
        max_at_once: int = 2,
    ) -> None:
        self.cache = cache
        self.events = events
        self._on_finished = on_finished  # the model list is read again (the cache now served)
        self._listed = listed
        self._limiter = trio.CapacityLimiter(max_at_once)
        self._active: dict[str, _Download] = {}
        self._nursery: trio.Nursery | None = None

    def attach(self, nursery: trio.Nursery) -> None:
        """Where downloads run from now on."""
        self._nursery = nursery

    def is_downloading(self, model_id: str) -> bool:
        return model_id in self._active

    async def start(self, requested: str) -> str:
        """Start downloading ``requested`` (``ORG/REPO[:QUANT]``); the id it will be listed by.

        Raises InvalidField (400) for what cannot be downloaded, a model already listed or
        already downloading; Unavailable (503) when the hub cannot be reached.

        Cancellation: stops waiting for the hub's listing; nothing has started then.
        """
        if self._nursery is None:
            raise Unavailable("the router is not serving yet")
        plan: DownloadPlan | None = None
        with trio.move_on_after(PLAN_TIMEOUT_S):
            plan = await trio.to_thread.run_sync(plan_download, requested, abandon_on_cancel=True)
        if plan is None:
            raise Unavailable(f"the hub did not list {requested!r} within {PLAN_TIMEOUT_S:g} s")
        if plan.is_preset:
            raise InvalidField(
                "model", f"{plan.repo} is a preset repository: serve it with -hf {plan.repo}"
            )
        if plan.model_id in self._active:
            raise InvalidField("model", f"{plan.model_id} is being downloaded already")
        if plan.model_id in self._listed():
            raise InvalidField("model", f"model {plan.model_id!r} already exists")
        download = _Download(plan)
        self._active[plan.model_id] = download
        self._nursery.start_soon(self._run, download)
        return plan.model_id

    def cancel(self, model_id: str) -> bool:
        """Stop downloading ``model_id`` at its next chunk (``download_failed``, reason
        ``"cancelled"``); whether it was downloading."""
        download = self._active.get(model_id)
        if download is None:
            return False
        download.is_cancelled.set()
        return True

    async def _run(self, download: _Download) -> None:
        """Cancellation: the thread is told to stop (at its next chunk) and left behind; its
        ``.incomplete`` file stays for a later try to resume."""
        plan = download.plan
        progress: dict[str, dict[str, int | None]] = {}
        last_sent = [-PROGRESS_INTERVAL_S]

        def publish_progress() -> None:
            snapshot = {url: dict(entry) for url, entry in progress.items()}
            self.events.publish(Event(plan.model_id, DOWNLOAD_PROGRESS, {"progress": snapshot}))

        def report(url: str, done: int, total: int | None) -> None:  # in the worker thread
            if download.is_cancelled.is_set():
                raise _Cancelled
            progress[url] = {"done": done, "total": total}
            now = time.monotonic()
            if now - last_sent[0] >= PROGRESS_INTERVAL_S or done == total:
                last_sent[0] = now
                trio.from_thread.run_sync(publish_progress)

        log.info("downloading %s (%s) into %s", plan.model_id, ", ".join(plan.files), self.cache)
        try:
            await trio.to_thread.run_sync(
                fetch, plan, self.cache, report, abandon_on_cancel=True, limiter=self._limiter
            )
        except _Cancelled:
            self._failed(plan.model_id, CANCELLED)
        except trio.Cancelled:
            download.is_cancelled.set()
            raise
        except Exception as exc:  # whatever the hub or the disk said: the event says it
            self._failed(plan.model_id, str(exc) or type(exc).__name__)
        else:
            del self._active[plan.model_id]
            log.info("downloaded %s", plan.model_id)
            self.events.publish(Event(plan.model_id, DOWNLOAD_FINISHED))
            self._on_finished()
        finally:
            self._active.pop(plan.model_id, None)

    def _failed(self, model_id: str, reason: str) -> None:
        self._active.pop(model_id, None)
        log.warning("download of %s failed: %s", model_id, reason)
        self.events.publish(Event(model_id, DOWNLOAD_FAILED, {"reason": reason}))
