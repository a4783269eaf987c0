"""Plugins end to end: a throwaway plugin file implementing every hook, loaded with --plugin
into a real router, and plugins that fail."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Generator
from pathlib import Path

import httpx
import pytest
import trio

import router
from router import ModelInfo, hookimpl
from router.errors import ModelNotFound, Unavailable
from router.hooks import hookspecs
from router.hooks.plugins import (
    PluginFailed,
    PluginLoadError,
    Plugins,
    call_each,
    call_each_now,
    call_first,
    call_first_now,
    describe,
    load_plugins,
)
from router.models.pool import ModelPool
from router.server import load_router_plugins
from router.settings import RouterSettings
from router.spec import ModelSpec
from tests.processes import running_router
from tests.test_router_e2e import statuses, wait_until
from tests.tiny_models import write_tiny_llama

SETTINGS = RouterSettings(load_installed_plugins=False)

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
        # The log line may reach the reader thread just after the answer does.
        wait_until(lambda: "plugin" in router.stderr_text(), "the failure is logged", 10)
        assert httpx.get(f"{router.base_url}/health").status_code == 200


LLAMA_ROUTER = Path(sys.executable).parent / "llama-router"


def serve_with_plugin(models: Path, plugin: Path) -> subprocess.CompletedProcess[str]:
    """``llama-router serve --plugin PLUGIN``, which must stop before it serves."""
    return subprocess.run(
        [str(LLAMA_ROUTER), "serve", "--port=0", f"--models-dir={models}", f"--plugin={plugin}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=plugin.parent,
    )


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("import not_a_module_anywhere\n", "failed to import"),
        (
            "from router import hookimpl\n@hookimpl\ndef no_such_hook(): pass\n",
            "implements 'no_such_hook', which is not a llama-router hook (the hooks: "
            "authenticate, authorize,",
        ),
        (
            "from router import hookimpl\n@hookimpl\ndef authorize(principal, modle): pass\n",
            "its authorize hook asks for 'modle', which authorize does not pass; it passes "
            "principal, model, request: rename the argument",
        ),
        (
            "from router import hookimpl\n@hookimpl(wrapper=True)\n"
            "def authenticate(request):\n    return (yield)\n",
            "authenticate takes no hook wrapper (wrapper=True)",
        ),
    ],
    ids=["import-error", "unknown-hook", "wrong-argument", "wrapper-on-async-hook"],
)
def test_a_plugin_that_cannot_load_stops_startup_in_one_line(
    models: Path, tmp_path: Path, source: str, message: str
) -> None:
    plugin = tmp_path / "bad_plugin.py"
    plugin.write_text(source)
    completed = serve_with_plugin(models, plugin)
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr  # no traceback
    assert lines[0].startswith(f"llama-router: error: plugin '{plugin}'")
    assert message in lines[0]


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
    plugins = load_router_plugins(SETTINGS)
    names = [plugin["name"] for plugin in describe(plugins)]
    assert {"router.api_keys", "router.aliases", "router.lru"} <= set(names)
    for hook in ("authenticate", "resolve_model", "choose_eviction"):
        impls = getattr(plugins.manager.hook, hook).get_hookimpls()
        assert all(impl.trylast for impl in impls if impl.plugin_name.startswith("router."))


def test_unknown_module_is_a_load_error() -> None:
    with pytest.raises(PluginLoadError, match="no_such_plugin_module"):
        load_plugins([], entry_points=False, extra=["no_such_plugin_module"])


def test_a_plugin_named_twice_is_a_load_error_that_says_so() -> None:
    class Quiet:
        @hookimpl
        def shutdown(self) -> None:
            pass

    plugin = Quiet()
    plugins = with_plugins(installed=plugin)
    with pytest.raises(PluginLoadError, match="already loaded as 'installed': name it once"):
        plugins.manager.register(plugin, name="from_the_command_line")


def test_every_hookspec_is_documented() -> None:
    docs = (Path(__file__).parent.parent / "docs" / "plugins.md").read_text()
    for name in dir(hookspecs):
        function = getattr(hookspecs, name)
        if callable(function) and hasattr(function, "llama_router_spec"):
            assert f"### `{name}(" in docs, f"hook {name} is missing from docs/plugins.md"


def test_every_public_type_field_and_method_is_documented() -> None:
    docs = (Path(__file__).parent.parent / "docs" / "plugins.md").read_text()
    for name in ("Denial", "ModelInfo", "PluginContext", "Principal", "RequestInfo", "Usage"):
        assert f"### `{name}`" in docs, f"{name} is missing from docs/plugins.md"
        exported = getattr(router, name)
        names = list(exported.__annotations__)  # fields, and PluginContext's attributes
        names += [m for m in vars(exported) if not m.startswith("_") and m not in names]
        section = docs.split(f"### `{name}`", 1)[1].split("\n### ", 1)[0]
        for member in names:
            line = next((ln for ln in section.splitlines() if ln.startswith(f"- `{member}")), "")
            assert line.partition("`: ")[2].strip(), f"{name}.{member} is not documented"
    assert "bearer_token() -> str`: The API key the client sent" in docs


def test_the_generated_reference_is_current() -> None:
    script = Path(__file__).parent.parent / "scripts" / "plugin_docs.py"
    spec = importlib.util.spec_from_file_location("plugin_docs", script)
    assert spec is not None and spec.loader is not None
    plugin_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin_docs)
    docs = script.parent.parent.joinpath("docs", "plugins.md").read_text()
    assert plugin_docs.hook_reference() in docs, "run scripts/plugin_docs.py"
    assert plugin_docs.types_reference() in docs, "run scripts/plugin_docs.py"


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


def test_plugins_command_names_a_broken_plugin_in_one_line(tmp_path: Path) -> None:
    plugin = tmp_path / "bad_plugin.py"
    plugin.write_text(
        "from router import hookimpl\n@hookimpl\ndef authorize(principal, modle): pass\n"
    )
    completed = subprocess.run(
        [str(LLAMA_ROUTER), "plugins", "--no-plugins", "--plugin", str(plugin)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert completed.returncode == 2
    assert completed.stderr.count("\n") == 1
    assert "asks for 'modle'" in completed.stderr


# ---- calling hooks through pluggy's caller ---------------------------------------------------


def with_plugins(**named: object) -> Plugins:
    """The built-in plugins, as the server loads them, then ``named``: a fresh manager."""
    plugins = load_router_plugins(SETTINGS)
    for name, plugin in named.items():
        plugins.manager.register(plugin, name=name)
    return plugins


def model(model_id: str, last_used: float = 0.0, aliases: tuple[str, ...] = ()) -> ModelInfo:
    return ModelInfo(
        id=model_id,
        path=None,
        aliases=aliases,
        status="loaded",
        in_flight=0,
        last_used=last_used,
        args={},
        is_pinned=False,
    )


def test_a_hook_wrapper_sees_and_replaces_the_answer() -> None:
    class EvictNewest:
        def __init__(self) -> None:
            self.seen: list[str] = []

        @hookimpl(wrapper=True)
        def choose_eviction(self, candidates: list[ModelInfo]) -> Generator[None, str, str]:
            victim = yield
            self.seen.append(victim)
            return max(candidates, key=lambda c: c.last_used).id

    wrapper = EvictNewest()
    plugins = with_plugins(newest=wrapper)
    candidates = [model("a", last_used=1.0), model("b", last_used=2.0)]
    victim = call_first_now(
        plugins, "choose_eviction", candidates=candidates, incoming="c", router=None
    )
    assert wrapper.seen == ["a"]  # the built-in LRU answered inside the wrapper
    assert victim == "b"


def test_a_hook_wrapper_that_raises_is_named() -> None:
    class Broken:
        @hookimpl(wrapper=True)
        def model_fits(self) -> Generator[None, object, object]:
            yield
            raise ValueError("no idea")

    plugins = with_plugins(broken_wrapper=Broken())
    with pytest.raises(PluginFailed, match="'broken_wrapper' failed in its model_fits hook"):
        call_first_now(plugins, "model_fits", incoming=model("a"), loaded=[], router=None)


@pytest.mark.parametrize("error", [RuntimeError("oops"), Unavailable("not a client's answer")])
def test_a_failing_eviction_plugin_is_passed_over_so_the_next_decides(error: Exception) -> None:
    class Broken:
        @hookimpl
        def choose_eviction(self) -> str:
            raise error

    plugins = with_plugins(broken=Broken())
    candidates = [model("a", last_used=2.0), model("b", last_used=1.0)]
    victim = call_first_now(
        plugins, "choose_eviction", candidates=candidates, incoming="c", router=None
    )
    assert victim == "b"  # the built-in LRU's answer


async def test_an_async_answer_of_none_passes_to_the_next_plugin_and_each_runs_once() -> None:
    calls: list[str] = []

    class First:
        @hookimpl(tryfirst=True)
        def resolve_model(self, requested: str) -> None:
            calls.append("first")

    class Second:
        @hookimpl
        async def resolve_model(self, requested: str) -> None:
            calls.append("second")

    class Third:
        @hookimpl
        def resolve_model(self, requested: str) -> str:
            calls.append("third")
            return "b"

    plugins = with_plugins(third=Third(), second=Second(), first=First())
    resolved = await call_first(
        plugins, "resolve_model", requested="x", request=None, catalog={"b": model("b")}
    )
    assert resolved == "b"
    assert calls == ["first", "second", "third"]


async def test_an_async_plugin_that_raises_is_named() -> None:
    class Broken:
        @hookimpl
        async def authorize(self, model: str) -> None:
            await trio.lowlevel.checkpoint()
            raise KeyError(model)

    plugins = with_plugins(async_broken=Broken())
    with pytest.raises(PluginFailed, match="'async_broken' failed in its authorize hook"):
        await call_first(plugins, "authorize", principal=None, model="a", request=None)


async def test_every_async_implementation_is_awaited_in_turn() -> None:
    order: list[str] = []

    class Slow:
        @hookimpl(tryfirst=True)
        async def startup(self) -> None:
            await trio.sleep(0)
            order.append("slow")

    class Quick:
        @hookimpl
        async def startup(self) -> None:
            order.append("quick")

    await call_each(with_plugins(quick=Quick(), slow=Slow()), "startup", router=None)
    assert order == ["slow", "quick"]


def test_a_decision_hook_that_returns_an_awaitable_is_named() -> None:
    class Async:
        @hookimpl
        async def child_launch(self) -> None:
            pass

    plugins = with_plugins(async_launch=Async())
    with pytest.raises(PluginFailed, match=r"'async_launch'.*returned an awaitable"):
        call_each_now(plugins, "child_launch", model=model("a"), argv=[], env={})


async def test_aliases_are_resolved_by_the_aliases_plugin_only(nursery: trio.Nursery) -> None:
    spec = ModelSpec(id="model-a", path=Path("a.gguf"), aliases=("short",))
    pool = ModelPool({"model-a": spec}, models_max=1, plugins=with_plugins())
    resolved = await call_first(
        pool.hooks._plugins,
        "resolve_model",
        requested="short",
        request=None,
        catalog=pool.hooks.catalog(),
    )
    assert resolved == "model-a"
    with pytest.raises(ModelNotFound):
        pool.resolve("short")  # the pool knows ids only: nothing special-cases the default


def test_plugin_modules_import_without_a_cycle() -> None:
    graph = router_import_graph()
    ours = {
        name
        for name in graph
        if name in ("router.hooks.plugins", "router.hooks.hookspecs", "router.hooks.plugin_types")
        or name.startswith("router.default_plugins")
    }
    for start in sorted(ours):
        path = cycle_from(graph, start)
        assert path is None, f"import cycle: {' -> '.join(path or [])}"


def router_import_graph() -> dict[str, set[str]]:
    """module → the router modules it imports anywhere in its code (lazy imports count)."""
    root = Path(router.__file__).parent
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                imported.add(base)
                imported.update(f"{base}.{alias.name}" for alias in node.names)
        graph[name] = {m for m in imported if m in modules and m != name}
    return graph


def cycle_from(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A path of imports from ``start`` back to itself, if there is one."""
    stack = [(start, [start])]
    seen: set[str] = set()
    while stack:
        name, path = stack.pop()
        for imported in sorted(graph.get(name, ())):
            if imported == start:
                return [*path, start]
            if imported not in seen:
                seen.add(imported)
                stack.append((imported, [*path, imported]))
    return None
