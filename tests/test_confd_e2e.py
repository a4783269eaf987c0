"""conf.d with a real router: aliases, ttl, startup loads, pinning, external commands, live
changes while requests run, bad files, and the config API."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
from pathlib import Path

import httpx
import openai
import pytest

from tests.processes import RouterProcess, running_router
from tests.test_router_e2e import LONG_STREAM, statuses, wait_until
from tests.tiny_models import write_tiny_llama

STUB_SERVER = textwrap.dedent('''
    """A minimal OpenAI-compatible server: what an external 'command' model could be."""
    import json, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def _send(self, payload):
            body = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self._send({"status": "ok"})

        def do_POST(self):
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            self._send({
                "id": "stub-1", "object": "chat.completion", "created": 0,
                "model": request["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "stub says hi"}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
            })

    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
''')


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A folder with models/ (three tiny GGUFs) and an empty conf.d/."""
    models = tmp_path / "models"
    models.mkdir()
    for seed, name in enumerate(("a", "b", "c")):
        write_tiny_llama(models / f"{name}.gguf", seed=seed, context_length=65536)
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "stub.py").write_text(STUB_SERVER)
    return tmp_path


def conf(site: Path, name: str, text: str) -> Path:
    path = site / "conf.d" / f"{name}.toml"
    path.write_text(textwrap.dedent(text))
    return path


def router_in(site: Path, *args: str) -> running_router:  # type: ignore[valid-type]
    return running_router(site / "empty-models", *args, cwd=site)


@pytest.fixture(autouse=True)
def _empty_models_dir(site: Path) -> None:
    (site / "empty-models").mkdir()


def complete(router: RouterProcess, model: str) -> httpx.Response:
    return httpx.post(
        f"{router.base_url}/v1/completions",
        json={"model": model, "prompt": "x", "max_tokens": 1},
        timeout=30,
    )


def test_aliases_route_to_the_model(site: Path) -> None:
    conf(site, "first", 'model = "../models/a.gguf"\naliases = ["fast", "cheap"]\n')
    with router_in(site) as router:
        assert complete(router, "cheap").json()["model"] == "first"
        assert statuses(router) == {"first": "loaded"}


def test_ttl_puts_an_idle_model_to_sleep(site: Path) -> None:
    conf(site, "brief", 'model = "../models/a.gguf"\nttl = 1\n')
    with router_in(site) as router:
        assert complete(router, "brief").status_code == 200
        assert statuses(router)["brief"] == "loaded"
        wait_until(lambda: statuses(router)["brief"] == "sleeping", "the ttl stops it")
        wait_until(lambda: "idle for its ttl" in router.stderr_text(), "the reason is logged")


def test_load_on_startup(site: Path) -> None:
    conf(site, "early", 'model = "../models/a.gguf"\nload_on_startup = true\n')
    conf(site, "lazy", 'model = "../models/b.gguf"\n')
    with router_in(site) as router:
        wait_until(lambda: statuses(router)["early"] == "loaded", "it loads unasked")
        assert statuses(router)["lazy"] == "unloaded"


def test_pinned_model_is_never_evicted(site: Path) -> None:
    conf(site, "pinned", 'model = "../models/a.gguf"\npinned = true\n')
    conf(site, "x", 'model = "../models/b.gguf"\n')
    conf(site, "y", 'model = "../models/c.gguf"\n')
    with router_in(site, "--models-max", "2") as router:
        for model in ("pinned", "x", "y"):  # pinned is the least recently used...
            assert complete(router, model).status_code == 200
        wait_until(lambda: statuses(router)["x"] == "unloaded", "x is evicted")
        assert statuses(router) == {"pinned": "loaded", "x": "unloaded", "y": "loaded"}


def test_external_command_models(site: Path) -> None:
    conf(
        site,
        "stub",
        f"""
        command = [{sys.executable!r}, "../stub.py", "{{port}}"]
        health = "/health"
    """,
    )
    conf(
        site,
        "own",
        f"""
        model = "../models/a.gguf"
        command = [{sys.executable!r}, "-m", "router", "child", "-m", "{{model}}",
                   "--port", "{{port}}", "--alias", "own", "-t", "1"]
    """,
    )
    with router_in(site) as router:
        client = openai.OpenAI(base_url=router.openai_base_url, api_key="x", max_retries=0)
        reply = client.chat.completions.create(
            model="stub", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].message.content == "stub says hi"
        own = client.completions.create(model="own", prompt="x", max_tokens=2)
        assert own.usage is not None and own.usage.completion_tokens == 2
        entry = next(
            e for e in httpx.get(f"{router.base_url}/models").json()["data"] if e["id"] == "stub"
        )
        port_arg = entry["status"]["args"][-1]
        assert port_arg.isdigit()  # the router picked the port
        httpx.post(f"{router.base_url}/models/unload", json={"model": "stub"})
        wait_until(lambda: statuses(router)["stub"] == "unloaded", "the stub is stopped")


def test_live_add_change_and_delete_while_a_request_runs(site: Path) -> None:
    conf(site, "main", 'model = "../models/a.gguf"\n[args]\nctx_size = 65536\n')
    with router_in(site) as router:
        with httpx.stream(
            "POST",
            f"{router.base_url}/v1/completions",
            json={**LONG_STREAM, "model": "main"},
            timeout=60,
        ) as stream:
            lines = stream.iter_lines()
            next(lines)
            conf(site, "extra", 'model = "../models/b.gguf"\n')
            wait_until(lambda: "extra" in statuses(router), "the new file is listed")
            conf(site, "main", 'model = "../models/a.gguf"\n[args]\nctx_size = 1024\n')
            wait_until(
                lambda: _status(router, "main").get("settings_pending") is True,
                "the change waits for the request",
            )
            assert statuses(router)["main"] == "loaded"  # not restarted under a request
            next(lines)  # and the stream still flows
        wait_until(lambda: _n_ctx(router, "main") == 1024, "main restarts with the new args")
        (site / "conf.d" / "extra.toml").unlink()
        wait_until(lambda: "extra" not in statuses(router), "the deleted model is delisted")


def _n_ctx(router: RouterProcess, model: str) -> int | None:
    response = httpx.get(f"{router.base_url}/props", params={"model": model}, timeout=30)
    if response.status_code != 200:
        return None
    value: int = response.json()["default_generation_settings"]["n_ctx"]
    return value


def test_bad_files_are_listed_and_never_stop_the_router(site: Path) -> None:
    conf(site, "good", 'model = "../models/a.gguf"\n')
    conf(site, "typo", 'model = "../models/a.gguf"\nttll = 3\n')
    conf(site, "broken", "model = [\n")
    conf(site, "nofile", 'model = "../models/missing.gguf"\n')
    with router_in(site) as router:
        data = {e["id"]: e for e in httpx.get(f"{router.base_url}/models").json()["data"]}
        assert data["typo"]["status"]["value"] == "invalid"
        assert (
            "typo.toml:2: unknown key 'ttll'; did you mean 'ttl'?"
            in (data["typo"]["status"]["error"])
        )
        assert "not valid TOML" in data["broken"]["status"]["error"]
        assert "no such file" in data["nofile"]["status"]["error"]
        refused = complete(router, "typo")
        assert refused.status_code == 503
        assert "invalid configuration" in refused.json()["error"]["message"]
        assert complete(router, "good").status_code == 200
        # A valid file that turns invalid keeps its last good settings, and says so.
        conf(site, "good", 'model = "../models/a.gguf"\nttl = "soon"\n')
        wait_until(lambda: "config_error" in _status(router, "good"), "the error shows")
        assert _status(router, "good")["value"] == "loaded"
        assert complete(router, "good").status_code == 200


def _status(router: RouterProcess, model: str) -> dict[str, object]:
    data = httpx.get(f"{router.base_url}/models").json()["data"]
    status: dict[str, object] = next(e for e in data if e["id"] == model)["status"]
    return status


COMMENTED = """\
# The model we test with. This comment must survive.
model = "../models/a.gguf"   # a tiny llama
aliases = ["t"]

ttl = 300  # five minutes

[args]
# a small context
ctx_size = 512
"""


def test_config_api_round_trip_keeps_the_file_byte_for_byte(site: Path) -> None:
    path = conf(site, "edited", COMMENTED)
    with router_in(site, "--allow-config-writes") as router:
        url = f"{router.base_url}/models/edited/config"
        assert httpx.get(url).json()["ttl"] == 300
        changed = httpx.patch(url, json={"ttl": 60, "args": {"ctx_size": 512, "parallel": 2}})
        assert changed.status_code == 200
        text = path.read_text()
        assert "ttl = 60  # five minutes" in text
        assert "# The model we test with. This comment must survive." in text
        assert "parallel = 2" in text
        httpx.patch(url, json={"ttl": 300, "args": {"ctx_size": 512}})
        assert path.read_text() == COMMENTED
        same = httpx.put(url, json=httpx.get(url).json())
        assert same.status_code == 200
        assert path.read_text() == COMMENTED
        refused = httpx.patch(url, json={"ttl": "forever"})
        assert refused.status_code == 400
        assert "'ttl'" in refused.json()["error"]["message"]
        assert path.read_text() == COMMENTED  # nothing half-written
        created = httpx.put(
            f"{router.base_url}/models/fresh/config", json={"model": "../models/b.gguf"}
        )
        assert created.status_code == 200
        assert "fresh" in statuses(router)
        assert httpx.delete(f"{router.base_url}/models/fresh/config").status_code == 200
        assert not (site / "conf.d" / "fresh.toml").exists()
        assert "fresh" not in statuses(router)


def test_config_writes_are_off_by_default_and_need_an_admin_key(site: Path) -> None:
    conf(site, "m", 'model = "../models/a.gguf"\n')
    with router_in(site) as router:
        refused = httpx.patch(f"{router.base_url}/models/m/config", json={"ttl": 1})
        assert refused.status_code == 403
        assert "--allow-config-writes" in refused.json()["error"]["message"]
    with router_in(
        site, "--allow-config-writes", "--api-key", "user", "--admin-api-key", "admin"
    ) as router:
        url = f"{router.base_url}/models/m/config"
        as_user = httpx.patch(url, json={"ttl": 1}, headers={"Authorization": "Bearer user"})
        assert as_user.status_code == 403
        as_admin = httpx.patch(url, json={"ttl": 1}, headers={"Authorization": "Bearer admin"})
        assert as_admin.status_code == 200


def test_values_no_process_can_take_are_refused_and_the_router_lives(site: Path) -> None:
    # A NUL in an environment value, on a model loaded at start-up: once, the spawn raised and
    # took the router down. Now the file is invalid, with its line, and nothing is spawned.
    conf(site, "nul", 'model = "../models/a.gguf"\nload_on_startup = true\n[env]\nA = "x\\u0000"\n')
    conf(site, "good", 'model = "../models/b.gguf"\n')
    with router_in(site, "--allow-config-writes") as router:
        data = {e["id"]: e for e in httpx.get(f"{router.base_url}/models").json()["data"]}
        assert data["nul"]["status"]["value"] == "invalid"
        assert "nul.toml:4: [env] 'A' holds a NUL character" in data["nul"]["status"]["error"]
        url = f"{router.base_url}/models/good/config"
        for env in ({"A=B": "x"}, {"": "x"}, {"A": "x\u0000"}):
            refused = httpx.patch(url, json={"env": env})
            assert refused.status_code == 400, refused.text
            assert "[env]" in refused.json()["error"]["message"]
        assert "[env]" not in (site / "conf.d" / "good.toml").read_text()
        assert httpx.get(f"{router.base_url}/health").status_code == 200
        assert complete(router, "good").status_code == 200


def test_config_writes_keep_the_file_mode_and_make_new_files_private(site: Path) -> None:
    path = conf(site, "private", 'model = "../models/a.gguf"\n')
    path.chmod(0o600)
    with router_in(site, "--allow-config-writes") as router:
        url = f"{router.base_url}/models/private/config"
        assert httpx.patch(url, json={"ttl": 60}).status_code == 200
        assert "ttl = 60" in path.read_text()
        assert path.stat().st_mode & 0o777 == 0o600
        path.chmod(0o640)
        assert httpx.put(url, json={"model": "../models/a.gguf"}).status_code == 200
        assert path.stat().st_mode & 0o777 == 0o640
        created = httpx.put(
            f"{router.base_url}/models/fresh/config", json={"model": "../models/b.gguf"}
        )
        assert created.status_code == 200
        assert (site / "conf.d" / "fresh.toml").stat().st_mode & 0o777 == 0o600


def test_a_config_id_too_long_for_a_file_name_is_a_4xx(site: Path) -> None:
    with router_in(site, "--allow-config-writes") as router:
        url = f"{router.base_url}/models/{'m' * 300}/config"
        for method in ("PUT", "PATCH"):
            response = httpx.request(method, url, json={"model": "../models/a.gguf"})
            assert response.status_code == 400, response.text
            assert "200 bytes at most" in response.json()["error"]["message"]
        assert httpx.delete(url).status_code == 400
        assert httpx.get(url).status_code == 404
        assert not list((site / "conf.d").iterdir())


def test_reload_endpoint_and_sighup(site: Path) -> None:
    with router_in(site) as router:
        conf(site, "late", 'model = "../models/a.gguf"\n')
        assert httpx.post(f"{router.base_url}/models/reload", json={}).json() == {"success": True}
        assert "late" in statuses(router)
        (site / "conf.d" / "late.toml").unlink()
        router.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "late" not in statuses(router), "SIGHUP rescans")
        wait_until(lambda: "SIGHUP" in router.stderr_text(), "the signal is logged")


def test_router_file_defaults_and_settings(site: Path) -> None:
    (site / "router.toml").write_text("[router]\nmodels_max = 1\n[defaults]\nctx_size = 256\n")
    conf(site, "m", 'model = "../models/a.gguf"\n')
    conf(site, "own", 'model = "../models/b.gguf"\n[args]\nctx_size = 768\n')
    with router_in(site) as router:
        assert httpx.get(f"{router.base_url}/props").json()["max_instances"] == 1
        assert _n_ctx(router, "m") == 256  # (llama.cpp rounds to 256s)
        assert _n_ctx(router, "own") == 768  # the model's file beats [defaults]
    with router_in(site, "-c", "1024") as router:
        assert _n_ctx(router, "own") == 1024  # and the command line beats both


def test_router_sigkill_also_ends_external_command_models(site: Path) -> None:
    conf(site, "stub", f'command = [{sys.executable!r}, "../stub.py", "{{port}}"]\n')
    with router_in(site) as router:
        assert httpx.post(f"{router.base_url}/models/load", json={"model": "stub"}).status_code
        wait_until(lambda: statuses(router)["stub"] == "loaded", "the stub runs")
        guard_pid = next(iter(_child_processes(router.process.pid)))
        group = os.getpgid(guard_pid)
        router.process.send_signal(signal.SIGKILL)
        router.process.wait(timeout=5)
        wait_until(lambda: not _group_members(group), "the stub's group is gone", 5)


def _child_processes(parent: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def _group_members(group: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def test_config_writes_through_an_alias_change_the_models_own_file(site: Path) -> None:
    path = conf(site, "real", 'model = "../models/a.gguf"\naliases = ["nick"]\nttl = 300\n')
    with router_in(site, "--allow-config-writes") as router:
        changed = httpx.patch(f"{router.base_url}/models/nick/config", json={"ttl": 60})
        assert changed.status_code == 200, changed.text
        assert "ttl = 60" in path.read_text()
        assert not (site / "conf.d" / "nick.toml").exists()
        assert httpx.get(f"{router.base_url}/models/nick/config").json()["ttl"] == 60
