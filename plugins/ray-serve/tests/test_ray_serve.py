"""The Ray Serve application on a local Ray cluster that this module starts (2 CPUs, loopback,
no dashboard): three tiny models over two router replicas, placed by model, and a replica
whose router is killed is replaced and serves again.

One cluster for the module (starting Ray and Serve takes ~10 s); the tests run in order.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import ray
from ray import serve

from llama_router_ray_serve import AppSettings, build_app
from llama_router_ray_serve.replica import LoadedModel
from llama_router_ray_serve.router_process import RouterProcess
from router.errors import SettingsError
from tests.processes import running_router
from tests.tiny_models import write_tiny_llama

MODELS = ("alpha", "beta", "gamma")
WAIT_S = 120.0  # one replica's replacement, or a model's first load, on 2 busy cores


def wait_for(condition: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.1)
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What Ray ships to each replica as its working_dir: conf.d/ and the models it names."""
    root = tmp_path_factory.mktemp("ray-app")
    (root / "models").mkdir()
    (root / "conf.d").mkdir()
    for name in MODELS:
        write_tiny_llama(root / "models" / f"{name}.gguf")
        (root / "conf.d" / f"{name}.toml").write_text(
            f'model = "../models/{name}.gguf"\n[args]\nthreads = 1\nctx_size = 256\n'
        )
    return root


@pytest.fixture(scope="module")
def ingress(app_dir: Path) -> Iterator[str]:
    """The application on a fresh local cluster; its base URL. Ray and Serve are shut down
    afterwards, which stops every replica and so every router (their guards end the rest)."""
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        configure_logging=False,
        log_to_driver=False,
        # The job's working_dir: a local folder is uploaded only at this level (a RayService
        # names a URI in its application's runtime_env instead; docs/ray-serve.md).
        runtime_env={"working_dir": str(app_dir)},
    )
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        settings = AppSettings(
            models_per_replica=2,
            min_replicas=2,
            max_replicas=2,
            router_args=("--spares", "0", "--threads", "1"),
            health_check_period_s=1.0,
        )
        serve.run(build_app(settings), name="llama", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def listing(base_url: str) -> dict[str, Any]:
    answer = httpx.get(f"{base_url}/v1/models", timeout=30)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def holders(base_url: str) -> dict[str, list[str]]:
    """Model id → the replicas whose routers hold it loaded."""
    return {
        entry["id"]: sorted(r for r, status in entry["replicas"].items() if status == "loaded")
        for entry in listing(base_url)["data"]
    }


def test_three_models_spread_over_two_replicas_and_stay_put(ingress: str) -> None:
    client = openai.OpenAI(base_url=f"{ingress}/v1", api_key="unused", max_retries=0, timeout=120)
    for model in MODELS:
        answer = client.completions.create(model=model, prompt="a", max_tokens=2)
        assert answer.usage is not None and answer.usage.completion_tokens == 2

    def placed_once() -> dict[str, list[str]] | None:
        held = holders(ingress)
        return held if all(len(held[model]) == 1 for model in MODELS) else None

    placed = wait_for(placed_once, "each model is loaded on one replica")
    assert len({replica for held in placed.values() for replica in held}) == 2, placed

    # Later requests, chat and streamed too, go where the model already is: nothing moves.
    for model in MODELS * 2:
        chat = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        assert chat.choices[0].message.content is not None
        chunks = list(client.completions.create(model=model, prompt="b", max_tokens=3, stream=True))
        assert "".join(c.choices[0].text for c in chunks if c.choices)
    assert holders(ingress) == placed

    listed = listing(ingress)
    assert sorted(entry["id"] for entry in listed["data"]) == list(MODELS)
    assert len(listed["replicas"]) == 2
    assert all(len(report["models"]) <= 2 for report in listed["replicas"])  # models_per_replica


def test_unknown_model_and_bad_body_get_openai_errors(ingress: str) -> None:
    client = openai.OpenAI(base_url=f"{ingress}/v1", api_key="unused", max_retries=0, timeout=60)
    with pytest.raises(openai.NotFoundError, match="nope"):
        client.completions.create(model="nope", prompt="a", max_tokens=1)
    answer = httpx.post(f"{ingress}/v1/completions", json={"prompt": "a"}, timeout=30)
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "model"


def replaced(ingress: str, victim: dict[str, Any]) -> bool:
    """Whether two replicas report again, and the victim is not one of them."""
    answer = httpx.get(f"{ingress}/v1/models", timeout=30)
    if answer.status_code != 200:  # 503 while no router answers the model list
        assert answer.status_code == 503, answer.text
        return False
    replicas = {report["replica"] for report in answer.json()["replicas"]}
    return len(replicas) == 2 and victim["replica"] not in replicas


def serves_every_model(ingress: str) -> None:
    client = openai.OpenAI(base_url=f"{ingress}/v1", api_key="unused", max_retries=0, timeout=120)
    for model in MODELS:
        answer = client.completions.create(model=model, prompt="a", max_tokens=1)
        assert answer.usage is not None and answer.usage.completion_tokens == 1


def live_processes() -> dict[int, tuple[int, int]]:
    """Each process that is not a zombie: pid → (parent pid, process group)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            found[int(stat.parent.name)] = (int(fields[1]), int(fields[2]))
    return found


def router_family(group: int) -> set[int]:
    """The live processes of a router's group (guard, router) and their descendants (the
    router's children, each in a group of its own)."""
    processes = live_processes()
    family = {pid for pid, (_, pgid) in processes.items() if pgid == group}
    while more := {pid for pid, (ppid, _) in processes.items() if ppid in family} - family:
        family |= more
    return family


def test_a_replica_whose_router_is_killed_is_replaced_and_serves_again(ingress: str) -> None:
    victim = listing(ingress)["replicas"][0]
    os.killpg(victim["router_group"], signal.SIGKILL)  # the guard's group: the router with it
    wait_for(lambda: replaced(ingress, victim), "Ray replaced the replica and it reported")
    serves_every_model(ingress)


def test_a_replica_killed_outright_takes_its_router_along_and_is_replaced(ingress: str) -> None:
    victim = max(listing(ingress)["replicas"], key=lambda report: len(report["models"]))
    family = router_family(victim["router_group"])
    assert len(family) >= 3, family  # guard, router, and the child of a loaded model
    (actor,) = [  # Serve names a replica's actor after the replica's id
        named
        for named in ray.util.list_named_actors(all_namespaces=True)
        if named["name"].endswith(victim["replica"])
    ]
    ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)
    wait_for(lambda: not family & set(live_processes()), "the router and its children ended")
    wait_for(lambda: replaced(ingress, victim), "Ray replaced the replica and it reported")
    serves_every_model(ingress)


def test_settings_from_serve_run_text() -> None:
    settings = AppSettings.from_args(
        {"models_per_replica": "3", "target_ongoing_requests": "1.5", "router_args": "-t 2"}
    )
    assert settings.models_per_replica == 3
    assert settings.target_ongoing_requests == 1.5
    assert settings.router_command_args()[:4] == ["--models-max", "3", "--conf-dir", "conf.d"]
    assert settings.router_command_args()[-2:] == ["-t", "2"]


def test_unknown_or_impossible_settings_are_refused_by_name() -> None:
    with pytest.raises(SettingsError, match="unknown settings \\['models_max'\\]"):
        AppSettings.from_args({"models_max": "2"})
    with pytest.raises(SettingsError, match="models_per_replica must be 1 or more"):
        AppSettings(models_per_replica=0)


def test_a_model_ray_evicts_is_unloaded_from_the_router_once(tmp_path: Path) -> None:
    """What Ray's multiplex LRU calls on eviction (``__del__``, in a thread), on a real router."""
    write_tiny_llama(tmp_path / "alpha.gguf")
    with running_router(tmp_path, "--spares", "0") as router:
        httpx.post(f"{router.base_url}/models/load", json={"model": "alpha"}, timeout=30)
        wait_for(lambda: statuses(router.base_url)["alpha"] == "loaded", "alpha loads", 60)
        model = LoadedModel("alpha", RouterProcess(router.process, router.base_url))
        model.__del__()
        assert model.is_unloaded
        wait_for(lambda: statuses(router.base_url)["alpha"] == "unloaded", "alpha unloads", 60)
        httpx.post(f"{router.base_url}/models/load", json={"model": "alpha"}, timeout=30)
        wait_for(lambda: statuses(router.base_url)["alpha"] == "loaded", "alpha loads again", 60)
        model.__del__()  # Python's own call, at garbage collection: nothing more happens
        assert statuses(router.base_url)["alpha"] == "loaded"


def statuses(base_url: str) -> dict[str, str]:
    data = httpx.get(f"{base_url}/models", timeout=10).json()["data"]
    return {entry["id"]: entry["status"]["value"] for entry in data}
