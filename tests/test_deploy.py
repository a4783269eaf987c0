"""What docs/deploy.md ships: the systemd unit is one systemd accepts, and the container's
slim runtime stage installs every library llama.cpp's build here links to."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import llama_cpp
import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "deploy" / "llama-router.service"
CONTAINERFILE = REPO / "deploy" / "Containerfile"
INSTALLED_PROGRAM = "/opt/llama-router/bin/llama-router"
# What python:3.11-slim-bookworm has already: the C library (libc, libm, the loader), libgcc.
IN_THE_SLIM_IMAGE = {"libc6", "libgcc-s1"}
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
READELF = shutil.which("readelf")
DPKG_QUERY = shutil.which("dpkg-query")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="no systemd-analyze here")
def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    """``systemd-analyze verify`` on the unit, with ``ExecStart`` at this environment's
    ``llama-router`` (verify insists that the program exists)."""
    text = UNIT.read_text()
    assert INSTALLED_PROGRAM in text
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace(INSTALLED_PROGRAM, str(Path(sys.prefix) / "bin" / "llama-router")))
    done = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stderr) == (0, "")


@pytest.mark.skipif(DPKG_QUERY is None or READELF is None, reason="not Debian, or no binutils")
def test_the_container_installs_what_llama_cpp_links_to() -> None:
    libraries = Path(llama_cpp.__file__).parent / "lib"
    needed = set()
    for library in libraries.glob("*.so"):
        dynamic = subprocess.run(
            [str(READELF), "--dynamic", str(library)], capture_output=True, text=True, check=True
        ).stdout
        needed |= set(re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", dynamic))
    ours = {path.name for path in libraries.iterdir()}
    packages = {_debian_package(soname) for soname in needed - ours}
    installs = re.search(r"apt-get install -y --no-install-recommends ([^\n&]+)", _runtime_stage())
    assert installs is not None
    assert packages - IN_THE_SLIM_IMAGE - set(installs.group(1).split()) == set()


def _runtime_stage() -> str:
    """The Containerfile's last stage: what the image that runs holds."""
    return CONTAINERFILE.read_text().rsplit("\nFROM ", 1)[1]


def _debian_package(soname: str) -> str:
    """The package that ships the library ``soname`` for this machine's architecture."""
    found = subprocess.run(
        [str(DPKG_QUERY), "--search", f"*/{soname}"], capture_output=True, text=True, timeout=60
    ).stdout
    for line in found.splitlines():
        package, path = line.split(": ", 1)
        if Path(path).parent.name.endswith("-linux-gnu") and Path(path).name == soname:
            return package.split(":")[0]
    raise AssertionError(f"no Debian package ships {soname}")
