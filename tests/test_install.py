"""Installed as users install it: the wheels of the router and of each plugin package, built
from the sources and installed into a fresh virtualenv with the llama-cpp-python wheel that
scripts/bootstrap.sh cached (so nothing is compiled), give a working ``llama-router`` that runs
from that virtualenv, not from this checkout.

About half a minute: four wheel builds, a virtualenv, an install (dependencies from the package
index, or pip's cache), one tiny model served. ``-m "not install"`` leaves it out while working.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import openai
import pytest

from tests.processes import running_router
from tests.tiny_models import write_tiny_llama

pytestmark = pytest.mark.install

REPO = Path(__file__).resolve().parent.parent
PLUGINS = sorted(path.parent for path in (REPO / "plugins").glob("*/pyproject.toml"))
# What a wheel is built from: the files pyproject.toml names, not the build leftovers beside.
ROUTER_SOURCES = ("pyproject.toml", "README.md", "router")
LEFTOVERS = shutil.ignore_patterns("__pycache__", "build", "*.egg-info", "tests")
STEP_TIMEOUT_S = 600  # one pip command, with a slow package index


def run(command: list[str], *, cwd: Path) -> str:
    """Run ``command`` in ``cwd`` without this checkout on the path; its stdout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT_S
    )
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def cached_llama_cpp_wheels() -> Path:
    """The folder where scripts/bootstrap.sh keeps the llama-cpp-python wheel that this
    environment runs (built with the flags it recorded), as scripts/cpu_flags.sh names it."""
    flags_file = Path(sys.prefix) / ".llama-cpp-build-flags"
    assert flags_file.is_file(), f"no {flags_file}: set up with scripts/bootstrap.sh first"
    folder = run(
        ["bash", "-c", 'source scripts/cpu_flags.sh && llama_cpp_wheel_dir "$1"', "bash",
         flags_file.read_text()],
        cwd=REPO,
    )  # fmt: skip
    wheels = Path(folder)
    assert list(wheels.glob("llama_cpp_python-*.whl")), (
        f"scripts/bootstrap.sh caches none in {wheels}"
    )
    return wheels


def build_wheels(tmp_path: Path) -> Path:
    """The wheels of the router and of each plugin, built from copies of their sources (a
    build in the checkout would leave build/ and *.egg-info folders there)."""
    sources = tmp_path / "sources"
    router_source = sources / "llama-router"
    router_source.mkdir(parents=True)
    for name in ROUTER_SOURCES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, router_source / name, ignore=LEFTOVERS)
        else:
            shutil.copy2(source, router_source / name)
    plugin_sources = [sources / plugin.name for plugin in PLUGINS]
    for plugin, copy in zip(PLUGINS, plugin_sources, strict=True):
        shutil.copytree(plugin, copy, ignore=LEFTOVERS)
    wheels = tmp_path / "wheels"
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir",
         str(wheels), str(router_source), *map(str, plugin_sources)],
        cwd=tmp_path,
    )  # fmt: skip
    return wheels


def test_the_built_wheels_install_into_a_fresh_virtualenv_and_serve(tmp_path: Path) -> None:
    llama_cpp_wheels = cached_llama_cpp_wheels()
    wheels = build_wheels(tmp_path)
    built = sorted(wheels.glob("*.whl"))
    assert len(built) == 1 + len(PLUGINS)

    router_wheel = next(w for w in built if w.name.startswith("llama_router-"))
    packed = set(zipfile.ZipFile(router_wheel).namelist())
    shipped = {
        path.relative_to(REPO).as_posix()
        for path in (REPO / "router").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert shipped - packed == set(), "files of router/ that the wheel leaves out"

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--prefer-binary",
         "--only-binary", "llama-cpp-python", "--find-links", str(llama_cpp_wheels),
         *map(str, built)],
        cwd=tmp_path,
    )  # fmt: skip

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    installed = run(
        [str(venv / "bin" / "python"), "-c",
         "import llama_cpp, router; print(router.__file__); print(llama_cpp.__version__)"],
        cwd=elsewhere,
    ).split()  # fmt: skip
    assert Path(installed[0]).is_relative_to(venv), installed
    cached = next(llama_cpp_wheels.glob("llama_cpp_python-*.whl")).name.split("-")[1]
    assert installed[1] == cached, "llama-cpp-python came from elsewhere than the cache"

    program = str(venv / "bin" / "llama-router")
    assert "ps" in run([program, "--help"], cwd=elsewhere).split()
    listed = run([program, "plugins"], cwd=elsewhere)
    for plugin in PLUGINS:
        project = tomllib.loads((plugin / "pyproject.toml").read_text())["project"]
        for entry_point in project.get("entry-points", {}).get("llama_router", {}):
            assert f"{entry_point} ({project['name']} " in listed, listed

    models = tmp_path / "models"
    models.mkdir()
    write_tiny_llama(models / "tiny.gguf")
    with running_router(models, "--spares", "0", cwd=elsewhere, program=[program]) as router:
        client = openai.OpenAI(base_url=router.openai_base_url, api_key="unused", max_retries=0)
        answer = client.completions.create(model="tiny", prompt="a", max_tokens=3)
        assert answer.usage is not None and answer.usage.completion_tokens == 3
