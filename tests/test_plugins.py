"""Plugins end to end: a throwaway plugin file implementing every hook, loaded with --plugin
into a real router, and plugins that fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from router import hookspecs
from router.plugins import PluginLoadError, describe, load_plugins
from router.settings import RouterSettings
from tests.processes import running_router
from tests.test_router_e2e import statuses, wait_until
from tests.tiny_models import write_tiny_llama

EVERY_HOOK = textwrap.dedent("""
    import json, os
    from pathlib import Path
    from router import Denial, Principal, hookimpl

    LOG = Path(os.environ["HOOK_LOG"])

    def note(**event):
        with LOG.open("a") as file:
            file.write(json.dumps(event, default=str) + "\\n")

    @hookimpl
    async def startup(router):
        note(hook="startup", models=sorted(router.models))

    @hookimpl
    def shutdown(router):
        note(hook="shutdown")

    @hookimpl
    def authenticate(request):
        if request.headers.get("x-user") == "mallory":
            return Denial("mallory is not welcome", status=401)
        if request.headers.get("x-user"):
            return Principal(name=request.headers["x-user"])
        return None

    @hookimpl
    async def authorize(principal, model, request):
        if principal.name == "bob" and model == "b":
            return Denial("bob may not use b")
        return None

    @hookimpl
    def resolve_model(requested, catalog):
        return "a" if requested == "latest" else None

    @hookimpl
    def transform_request(model, body, principal):
        if "max_tokens" in body:
            body["max_tokens"] = min(body["max_tokens"], 3)
        return body

    @hookimpl
    def choose_eviction(candidates, incoming, router):
        note(hook="choose_eviction", candidates=sorted(c.id for c in candidates),
             incoming=incoming)
        return max(c.id for c in candidates)  # not LRU: the highest id

    @hookimpl
    def child_launch(model, argv, env):
        env["PLUGIN_WAS_HERE"] = model.id
        note(hook="child_launch", model=model.id)

    @hookimpl
    def model_status(model, old, new, detail):
        note(hook="model_status", model=model, old=old, new=new)

    @hookimpl
    def register_routes(app):
        @app.get("/hello")
        async def hello():
            return {"hello": "from a plugin"}

    @hookimpl
    async def request_finished(model, principal, usage, duration_s, status):
        note(hook="request_finished", model=model, principal=principal.name,
             completion_tokens=usage.completion_tokens if usage else None, status=status)

    @hookimpl
    def model_fits(incoming, loaded, router):
        return None
""")


@pytest.fixture
def models(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    for seed, name in enumerate(("a", "b", "c")):
        write_tiny_llama(folder / f"{name}.gguf", seed=seed)
    return folder


def events(log: Path) -> list[dict[str, object]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_every_hook_through_a_plugin_file(models: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    plugin = tmp_path / "every_hook.py"
    plugin.write_text(EVERY_HOOK)
    log = tmp_path / "hooks.jsonl"
    monkeypatch.setenv("HOOK_LOG", str(log))
    with running_router(models, "--plugin", str(plugin), "--models-max", "2") as router:
        base = router.base_url
        wait_until(lambda: any(e["hook"] == "startup" for e in events(log)), "startup ran")
        assert next(e for e in events(log) if e["hook"] == "startup")["models"] == ["a", "b", "c"]
        assert httpx.get(f"{base}/hello").json() == {"hello": "from a plugin"}
        refused = httpx.get(f"{base}/v1/models", headers={"x-user": "mallory"})
        assert refused.status_code == 401
        assert refused.json()["error"]["message"] == "mallory is not welcome"

        ok = httpx.post(
            f"{base}/v1/completions",
            headers={"x-user": "alice"},
            json={"model": "latest", "prompt": "x", "max_tokens": 50, "ignore_eos": True},
            timeout=30,
        )
        assert ok.json()["model"] == "a"  # resolve_model routed "latest" to a
        assert ok.json()["usage"]["completion_tokens"] == 3  # transform_request capped it
        denied = httpx.post(
            f"{base}/v1/completions",
            headers={"x-user": "bob"},
            json={"model": "b", "prompt": "x"},
            timeout=30,
        )
        assert denied.status_code == 403
        assert "bob may not use b" in denied.json()["error"]["message"]

        for model in ("b", "c"):  # the third model needs room: the plugin evicts "b"
            httpx.post(
                f"{base}/v1/completions",
                json={"model": model, "prompt": "x", "max_tokens": 1},
                timeout=30,
            )
        wait_until(lambda: statuses(router)["b"] == "unloaded", "b is evicted")
        assert statuses(router)["a"] == "loaded"  # LRU would have evicted a
        evictions = [e for e in events(log) if e["hook"] == "choose_eviction"]
        assert evictions[0]["candidates"] == ["a", "b"]
        assert evictions[0]["incoming"] == "c"

        launched = {e["model"] for e in events(log) if e["hook"] == "child_launch"}
        assert {"a", "b", "c"} <= launched
        child_env = Path(f"/proc/{router.child_pids()['a']}/environ").read_bytes()
        assert b"PLUGIN_WAS_HERE=a" in child_env

        finished = [e for e in events(log) if e["hook"] == "request_finished"]
        assert {"model": "a", "principal": "alice", "completion_tokens": 3, "status": 200} in [
            {k: e[k] for k in ("model", "principal", "completion_tokens", "status")}
            for e in finished
        ]
        transitions = [
            (e["model"], e["old"], e["new"]) for e in events(log) if e["hook"] == "model_status"
        ]
        assert ("a", "unloaded", "loading") in transitions
        assert ("a", "loading", "loaded") in transitions
        router.process.terminate()
        router.process.wait(timeout=30)
    assert any(e["hook"] == "shutdown" for e in events(log))


def test_a_plugin_that_raises_is_named_in_the_500(models: Path, tmp_path: Path) -> None:
    plugin = tmp_path / "broken_router.py"
    plugin.write_text(
        textwrap.dedent("""
        from router import hookimpl

        @hookimpl
        def resolve_model(requested):
            raise KeyError(requested)
    """)
    )
    with running_router(models, "--plugin", str(plugin)) as router:
        response = httpx.post(
            f"{router.base_url}/v1/completions", json={"model": "a", "prompt": "x"}, timeout=30
        )
        assert response.status_code == 500
        assert str(plugin) in response.json()["error"]["message"]
        assert "resolve_model" in response.json()["error"]["message"]
        assert "plugin" in router.stderr_text()
        assert httpx.get(f"{router.base_url}/health").status_code == 200


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("import not_a_module_anywhere\n", "failed to import"),
        ("from router import hookimpl\n@hookimpl\ndef no_such_hook(): pass\n", "is invalid"),
    ],
)
def test_a_plugin_that_cannot_load_stops_startup(
    models: Path, tmp_path: Path, source: str, message: str
) -> None:
    plugin = tmp_path / "bad_plugin.py"
    plugin.write_text(source)
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "router",
            "--models-dir",
            str(models),
            "--port",
            "0",
            "--plugin",
            str(plugin),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert completed.returncode == 1
    assert message in completed.stderr
    assert "bad_plugin" in completed.stderr


def test_plugins_command_lists_plugins_and_hooks(tmp_path: Path) -> None:
    plugin = tmp_path / "listed.py"
    plugin.write_text(EVERY_HOOK)
    completed = subprocess.run(
        [sys.executable, "-m", "router", "plugins", "--plugin", str(plugin)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=tmp_path,
        env={**os.environ, "HOOK_LOG": str(tmp_path / "unused.jsonl")},
    )
    assert "router.api_keys: authenticate" in completed.stdout
    assert f"{plugin}: " in completed.stdout
    assert "request_finished" in completed.stdout


def test_defaults_are_ordinary_trylast_plugins() -> None:
    plugins = load_plugins(RouterSettings(), entry_points=False)
    names = [plugin["name"] for plugin in describe(plugins)]
    assert {"router.api_keys", "router.aliases", "router.lru"} <= set(names)
    for hook in ("authenticate", "resolve_model", "choose_eviction"):
        impls = getattr(plugins.manager.hook, hook).get_hookimpls()
        assert all(impl.trylast for impl in impls if impl.plugin_name.startswith("router."))


def test_unknown_module_is_a_load_error() -> None:
    with pytest.raises(PluginLoadError, match="no_such_plugin_module"):
        load_plugins(RouterSettings(), entry_points=False, extra=["no_such_plugin_module"])


def test_every_hookspec_is_documented() -> None:
    docs = (Path(__file__).parent.parent / "docs" / "plugins.md").read_text()
    for name in dir(hookspecs):
        function = getattr(hookspecs, name)
        if callable(function) and hasattr(function, "llama_router_spec"):
            assert f"### `{name}(" in docs, f"hook {name} is missing from docs/plugins.md"


def test_router_toml_lists_plugins(tmp_path: Path) -> None:
    plugin = tmp_path / "from_toml.py"
    plugin.write_text("from router import hookimpl\n\n@hookimpl\ndef shutdown(router):\n    pass\n")
    config = tmp_path / "router.toml"
    config.write_text(f'plugins = ["{plugin}"]\n')
    completed = subprocess.run(
        [sys.executable, "-m", "router", "plugins", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=tmp_path,
    )
    assert f"{plugin}: shutdown" in completed.stdout


def test_no_plugins_skips_installed_packages(tmp_path: Path) -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "router", "plugins", "--no-plugins"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=tmp_path,
    ).stdout
    assert [line.split(":")[0] for line in listed.splitlines()] == [
        "router.api_keys", "router.aliases", "router.lru",
    ]  # fmt: skip
