"""Spare children (``--spares N``): N wait, already started, for the next load; one used is
replaced at once, so back-to-back loads find one; ``GET /models`` shows what each costs. A
spare's process whose model is unloaded waits for the next model instead of exiting, within
bounds, and keeps no file descriptor, thread or memory of the model it served."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from router.errors import SettingsError
from router.processes import lifeline
from router.processes.supervisor import ChildExit, Supervisor, SupervisorSettings
from router.settings import RouterSettings
from router.spec import ModelSpec
from tests.processes import RouterProcess, pid_is_alive, running_router
from tests.test_router_e2e import wait_until
from tests.tiny_models import write_tiny_llama, write_truncated_gguf

WAIT_S = 30


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("spares")
    for seed, name in enumerate(("a", "b")):
        write_tiny_llama(folder / f"{name}.gguf", seed=seed, context_length=512)
    write_truncated_gguf(folder / "broken.gguf", folder / "a.gguf")
    return folder


def spares(router: RouterProcess) -> list[dict[str, int | bool | None]]:
    listed: list[dict[str, int | bool | None]] = httpx.get(
        f"{router.base_url}/models", timeout=WAIT_S
    ).json()["spares"]
    return listed


def complete(router: RouterProcess, model: str, status: int = 200) -> httpx.Response:
    response = httpx.post(
        f"{router.base_url}/v1/completions",
        json={"model": model, "prompt": "x", "max_tokens": 1},
        timeout=WAIT_S,
    )
    assert response.status_code == status, response.text
    return response


def test_the_spares_asked_for_wait_and_are_replaced_once_used(two_models: Path) -> None:
    with running_router(two_models, "-c", "512", "--spares", "2", "--models-max", "1") as router:
        wait_until(lambda: len(spares(router)) == 2, "two spares have started")
        before = {entry["pid"] for entry in spares(router)}
        complete(router, "a")
        assert router.child_pids()["a"] in before  # the load went to a spare
        wait_until(lambda: len(spares(router)) == 2, "the used spare is replaced")
        complete(router, "b")  # a swap: it finds a spare too
        assert router.child_pids()["b"] in before | {entry["pid"] for entry in spares(router)}
        wait_until(
            lambda: all(entry["rss_mib"] and entry["is_ready"] for entry in spares(router)),
            "their memory is shown, and that they are ready",
        )
        assert "handed to a spare child" in router.stderr_text()


def test_no_spares_when_turned_off(two_models: Path) -> None:
    with running_router(two_models, "-c", "512", "--spares", "0") as router:
        complete(router, "a")
        assert spares(router) == []
        assert "handed to a spare child" not in router.stderr_text()


def test_a_spare_count_out_of_range_is_refused() -> None:
    with pytest.raises(SettingsError, match="--spares"):
        RouterSettings(spares=-1)


def process_figures(pid: int) -> tuple[int, int, int]:
    """Open file descriptors, threads and resident memory (MiB) of process ``pid``."""
    fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return fds, int(status["Threads"]), int(status["VmRSS"].split()[0]) // 1024


def test_a_swap_reuses_the_unloaded_models_process_which_keeps_nothing_of_it(
    two_models: Path,
) -> None:
    with running_router(two_models, "-c", "512", "--models-max", "1") as router:
        complete(router, "a")
        pid = router.child_pids()["a"]
        complete(router, "b")  # a is unloaded: its process goes back to waiting, b gets it
        assert router.child_pids() == {"b": pid}
        assert "waits as a spare" in router.stderr_text()
        fds, threads, rss_mib = process_figures(pid)
        for _ in range(6):
            complete(router, "a")
            complete(router, "b")
        assert router.child_pids() == {"b": pid}  # one process served all fourteen loads

        def nothing_kept() -> bool:
            # A health check's socket, or a worker thread trio keeps for a few seconds, come
            # and go; a leak stays.
            now_fds, now_threads, _ = process_figures(pid)
            return now_fds <= fds and now_threads <= threads

        wait_until(nothing_kept, "its file descriptors and threads are back to one load's")
        assert process_figures(pid)[2] - rss_mib < 16  # each model's memory was given back


def test_an_unload_keeps_the_spare_that_is_ready(two_models: Path) -> None:
    """Right after a load, its replacement spare is still importing (about a second here);
    an unload then gives back a ready process, one too many: the one still importing goes,
    so the next load is served at once."""
    with running_router(two_models, "-c", "512", "--spares", "1") as router:
        wait_until(lambda: [entry["is_ready"] for entry in spares(router)] == [True], "ready")
        complete(router, "a")
        pid = router.child_pids()["a"]
        response = httpx.post(f"{router.base_url}/models/unload", json={"model": "a"})
        assert response.status_code == 200, response.text
        wait_until(lambda: router.child_pids() == {}, "a is unloaded")
        wait_until(lambda: len(spares(router)) == 1, "one spare is left")
        kept = spares(router)[0]
        if kept["pid"] != pid:  # the new spare was ready first: either may stay
            assert kept["is_ready"]
        complete(router, "b")
        assert router.child_pids()["b"] == kept["pid"]


def test_a_load_that_fails_in_a_reused_process_says_why_and_the_next_one_works(
    two_models: Path,
) -> None:
    with running_router(two_models, "-c", "512", "--models-max", "1") as router:
        complete(router, "a")
        pid = router.child_pids()["a"]
        failed = complete(router, "broken", status=503)
        assert "not within the file bounds" in failed.json()["error"]["message"]
        complete(router, "b")
        assert router.child_pids()["b"] != pid  # the process that failed has exited


def test_the_spare_lines_are_the_childs_own() -> None:
    secret = lifeline.new_secret()
    assert lifeline.is_spare_line(f"{lifeline.SPARE_WORD} {secret}\n", secret)
    assert not lifeline.is_spare_line(f"{lifeline.SPARE_WORD} {lifeline.new_secret()}", secret)
    assert not lifeline.is_spare_line(f"{lifeline.SPARE_WORD} {secret} x", secret)
    assert lifeline.stop_command(2.5) == b"stop 2.5\n"
    assert lifeline.stop_command(2.5, back_to_spare=True) == b"stop 2.5 spare\n"


class _Swapper:
    """Supervisor events that load the next model as soon as one exits, as the pool does in a
    swap with ``--models-max 1``."""

    def __init__(self) -> None:
        self.ready: list[tuple[str, int]] = []
        self.exits: list[ChildExit] = []
        self.start_next: Callable[[], object] = lambda: None
        self.changed = trio.Event()

    def child_ready(self, model_id: str, address: str, pid: int) -> None:
        self.ready.append((model_id, pid))
        self.changed.set()

    def child_exited(self, model_id: str, ended: ChildExit) -> None:
        self.exits.append(ended)
        start_next, self.start_next = self.start_next, lambda: None  # once: a load, not a loop
        start_next()
        self.changed.set()

    def has_loaded(self, count: int) -> Callable[[], bool]:
        return lambda: len(self.ready) == count

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        with trio.fail_after(WAIT_S):
            while not condition():
                self.changed = trio.Event()
                await self.changed.wait()


async def test_a_process_past_its_bound_serves_on_until_a_new_spare_is_ready(
    two_models: Path, tmp_path: Path
) -> None:
    """``models_per_process`` is a soft bound: a process past it that ended would leave the
    next load a spare still importing (paused while requests run, here for the whole test:
    that load would wait). It serves on, and ends at the first unload after a spare under the
    bound is ready."""
    events = _Swapper()
    settings = SupervisorSettings(
        runtime_dir=tmp_path,
        child_options={"ctx_size": 512, "threads": 1},
        spares=1,
        models_per_process=2,
        pause_importing_spares=True,  # pytest may not lead its session
        spare_pause_max_s=WAIT_S * 4,
    )
    specs = [ModelSpec(id=name, path=two_models / f"{name}.gguf") for name in ("a", "b", "a")]
    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(nursery, settings, events)
        supervisor.keep_spares()
        await wait_for_spare(supervisor, lambda spare: bool(spare["is_ready"]))
        supervisor.requests_running(True)  # the spares started from now on wait, paused
        supervisor.start(specs[0])
        for loaded, (previous, spec) in enumerate(itertools.pairwise(specs), start=1):
            await events.wait_for(events.has_loaded(loaded))
            events.start_next = partial(supervisor.start, spec)
            supervisor.stop(previous.id)
        await events.wait_for(events.has_loaded(3))
        # Past its bound, with the new spare paused: it served a third model.
        assert events.ready[0][1] == events.ready[1][1] == events.ready[2][1]
        supervisor.requests_running(False)
        fresh = await wait_for_spare(
            supervisor, lambda spare: bool(spare["is_ready"]) and spare["models_served"] == 0
        )
        events.start_next = partial(supervisor.start, ModelSpec(id="b", path=two_models / "b.gguf"))
        supervisor.stop("a")
        await events.wait_for(events.has_loaded(4))
        old_pid = events.ready[0][1]
        await wait_in_trio(lambda: not pid_is_alive(old_pid))  # it ended, not waited as a spare
        assert old_pid not in [spare["pid"] for spare in supervisor.spare_report()]
        await supervisor.stop_all()
        nursery.cancel_scope.cancel()
    assert events.ready[3] == ("b", fresh["pid"])  # the new spare took the next model
    assert [ended.exit_code for ended in events.exits] == [0, 0, 0, 0]
    assert all(ended.was_stopped for ended in events.exits)


def process_state(pid: int) -> str:
    """``R``, ``S``, ``T`` (stopped)...: the state letter of ``/proc/PID/stat``."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


async def wait_for_spare(supervisor: Supervisor, condition: Callable[[dict], bool]) -> dict:
    with trio.fail_after(WAIT_S):
        while True:
            for spare in supervisor.spare_report():
                if condition(spare):
                    return spare
            await trio.sleep(0.02)


async def wait_in_trio(condition: Callable[[], bool]) -> None:
    with trio.fail_after(WAIT_S):
        while not condition():
            await trio.sleep(0.02)


async def test_a_spare_imports_only_while_no_request_runs(
    two_models: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A spare's second of imports would take the CPU from the model that requests run on:
    it is paused while they run, resumed when none do, and resumed for a load that takes it."""
    events = _Swapper()
    settings = SupervisorSettings(
        runtime_dir=tmp_path,
        child_options={"ctx_size": 512, "threads": 1},
        spares=1,
        pause_importing_spares=True,  # pytest may not lead its session
        spare_pause_max_s=WAIT_S * 4,  # held back for as long as the test needs
    )
    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(nursery, settings, events)
        supervisor.requests_running(True)
        supervisor.keep_spares()
        spare = await wait_for_spare(supervisor, lambda spare: bool(spare["is_paused"]))
        await wait_in_trio(lambda: process_state(spare["pid"]) == "T")
        supervisor.requests_running(False)
        await wait_for_spare(supervisor, lambda spare: bool(spare["is_ready"]))
        supervisor.requests_running(True)  # a ready spare has nothing left to take: it waits
        assert [(s["is_ready"], s["is_paused"]) for s in supervisor.spare_report()] == [
            (True, False)
        ]
        supervisor.start(ModelSpec(id="a", path=two_models / "a.gguf"))
        await events.wait_for(events.has_loaded(1))
        # The load's replacement starts while requests run: paused from its start...
        second = await wait_for_spare(supervisor, lambda spare: bool(spare["is_paused"]))
        supervisor.stop("a")
        await events.wait_for(lambda: len(events.exits) == 1)
        supervisor.start(ModelSpec(id="b", path=two_models / "b.gguf"))  # reuses a's process
        await events.wait_for(events.has_loaded(2))
        assert events.ready[0][1] == events.ready[1][1]
        # One spare too many, the paused one went (a signal it needs not be running for).
        await wait_in_trio(lambda: not pid_is_alive(second["pid"]))
        third = await wait_for_spare(supervisor, lambda spare: bool(spare["is_paused"]))
        supervisor.start(ModelSpec(id="a", path=two_models / "a.gguf"))  # takes the paused one
        await events.wait_for(events.has_loaded(3))
        assert events.ready[2] == ("a", third["pid"])  # resumed, it imported and loaded
        fourth = await wait_for_spare(supervisor, lambda spare: bool(spare["is_paused"]))
        await supervisor.stop_all()  # ...and one still importing goes at once
        nursery.cancel_scope.cancel()
    assert "did not exit on end-of-file" not in caplog.text
    assert not pid_is_alive(fourth["pid"])


async def test_a_spare_is_held_back_for_a_while_only(tmp_path: Path) -> None:
    """Under requests that never stop (a swap after another), a paused spare would never be
    ready and the next load would pay for all of its imports: it imports once held back for
    ``spare_pause_max_s``, requests or not."""
    settings = SupervisorSettings(
        runtime_dir=tmp_path,
        spares=1,
        pause_importing_spares=True,
        spare_pause_max_s=0.5,
    )
    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(nursery, settings, _Swapper())
        supervisor.requests_running(True)  # and they never stop
        supervisor.keep_spares()
        await wait_for_spare(supervisor, lambda spare: bool(spare["is_paused"]))
        ready = await wait_for_spare(supervisor, lambda spare: bool(spare["is_ready"]))
        assert not ready["is_paused"]
        await supervisor.stop_all()
        nursery.cancel_scope.cancel()


PAUSED_SPARE_SCRIPT = """
import sys, trio
from pathlib import Path
from router.processes.supervisor import Supervisor, SupervisorSettings

class Events:
    def child_ready(self, *args): pass
    def child_exited(self, *args): pass

async def main():
    async with trio.open_nursery() as nursery:
        settings = SupervisorSettings(runtime_dir=Path(sys.argv[1]), spares=1)
        supervisor = Supervisor(nursery, settings, Events())
        supervisor.requests_running(True)
        supervisor.keep_spares()
        while not supervisor.spare_report():
            await trio.sleep(0.01)
        spare = supervisor.spare_report()[0]
        print(spare["pid"], spare["is_paused"], flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


def test_a_paused_spare_does_not_outlive_a_killed_router(tmp_path: Path) -> None:
    """Paused, a spare cannot read the end-of-file that tells a child its router is gone: the
    kernel must wake it when its group is orphaned, which it does for sure when the router
    leads its session (as under systemd)."""
    assert stand_in_router_with_a_spare(tmp_path, leads_session=True)


def test_a_router_that_does_not_lead_its_session_pauses_no_spare(tmp_path: Path) -> None:
    """Whatever adopted a paused spare after the router's death could be in the router's
    session (a supervisor that starts programs in its own): its group would not count as
    orphaned and nothing would wake it. Such a router lets its spares import."""
    assert not stand_in_router_with_a_spare(tmp_path, leads_session=False)


def stand_in_router_with_a_spare(tmp_path: Path, *, leads_session: bool) -> bool:
    """Run PAUSED_SPARE_SCRIPT (a supervisor with requests running and one spare), kill it
    with SIGKILL once its spare is up (and paused, if it pauses), and check that the spare
    exits; whether it was paused."""
    router = subprocess.Popen(
        [sys.executable, "-c", PAUSED_SPARE_SCRIPT, str(tmp_path)],
        stdout=subprocess.PIPE,
        start_new_session=leads_session,
    )
    assert router.stdout is not None
    pid_text, paused_text = router.stdout.readline().split()
    pid, is_paused = int(pid_text), paused_text == b"True"
    try:
        if is_paused:
            wait_until(lambda: process_state(pid) == "T", "the spare is paused")
        router.kill()
        router.wait(timeout=WAIT_S)
        wait_until(lambda: not pid_is_alive(pid), "the spare exits with its router")
    finally:
        router.kill()
        router.wait()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # had the test failed, no stopped orphan stays
    return is_paused
