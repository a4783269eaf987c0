"""A small Hugging Face hub on loopback, for tests that download (``HF_ENDPOINT``).

It serves the routes ``huggingface_hub`` calls to download a file:

* ``GET /api/models/ORG/REPO`` (and ``.../revision/REV``): the repository's listing, its
  files as ``siblings`` and its commit as ``sha``;
* ``HEAD`` and ``GET /ORG/REPO/resolve/REV/FILE``: the file, with ``X-Repo-Commit``, ``ETag``
  (its sha256, as the hub gives for LFS files) and ``Content-Length``; ``Range: bytes=N-``
  answers 206 with the rest.

Unknown repositories answer 404 with ``X-Error-Code: RepoNotFound``, as the hub does. Two
misbehaviours on demand: ``cut_once`` (the first GET of a file sends half of it, then closes
the connection: a download must resume with a Range request) and ``hold`` (a GET sends half,
then waits until the test sets the event: a download is caught midway). Every request is
recorded in ``requests`` (method, path, Range header).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"
HOLD_TIMEOUT_S = 30.0  # a held GET is released by then, test or no test


@dataclass
class FakeHub:
    """The repositories served (``repos[REPO][FILENAME] = bytes``) and what happened."""

    repos: dict[str, dict[str, bytes]] = field(default_factory=dict)
    cut_once: set[str] = field(default_factory=set)  # "REPO/FILE": cut the first GET
    hold: dict[str, threading.Event] = field(default_factory=dict)  # "REPO/FILE": wait midway
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    endpoint: str = ""

    def add_file(self, repo: str, filename: str, source: Path | bytes) -> None:
        data = source if isinstance(source, bytes) else source.read_bytes()
        self.repos.setdefault(repo, {})[filename] = data


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _answer(self, *, send_body: bool) -> None:
        hub = self.hub
        path = self.path.split("?", 1)[0]
        hub.requests.append((self.command, path, self.headers.get("Range")))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            self._listing("/".join(parts[2:4]), send_body=send_body)
        elif len(parts) >= 5 and parts[2] == "resolve":
            self._file("/".join(parts[:2]), "/".join(parts[4:]), send_body=send_body)
        else:
            self._not_found("Entry", send_body=send_body)

    def _listing(self, repo: str, *, send_body: bool) -> None:
        files = self.hub.repos.get(repo)
        if files is None:
            self._not_found("Repo", send_body=send_body)
            return
        body = json.dumps(
            {
                "id": repo,
                "modelId": repo,
                "sha": COMMIT,
                "private": False,
                "siblings": [{"rfilename": name} for name in sorted(files)],
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _file(self, repo: str, filename: str, *, send_body: bool) -> None:
        files = self.hub.repos.get(repo)
        if files is None:
            self._not_found("Repo", send_body=send_body)
            return
        data = files.get(filename)
        if data is None:
            self._not_found("Entry", send_body=send_body)
            return
        start = 0
        range_header = self.headers.get("Range")
        if range_header and range_header.startswith("bytes=") and range_header.endswith("-"):
            start = int(range_header.removeprefix("bytes=").removesuffix("-"))
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Accept-Ranges", "bytes")
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if not send_body:
            return
        key = f"{repo}/{filename}"
        rest = data[start:]
        if key in self.hub.cut_once:
            self.hub.cut_once.discard(key)
            self.wfile.write(rest[: len(rest) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)  # the peer sees the body end short
            return
        held = self.hub.hold.get(key)
        if held is not None:
            self.wfile.write(rest[: len(rest) // 2])
            self.wfile.flush()
            held.wait(HOLD_TIMEOUT_S)
            self.wfile.write(rest[len(rest) // 2 :])
            return
        self.wfile.write(rest)

    def _not_found(self, what: str, *, send_body: bool) -> None:
        body = json.dumps({"error": f"{what} not found"}).encode()
        self.send_response(404)
        self.send_header("X-Error-Code", f"{what}NotFound")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)


def write_cached_model(cache: Path, repo: str, files: dict[str, Path | bytes]) -> Path:
    """Put ``files`` into ``cache`` as ``huggingface_hub`` lays a download out (refs/main, a
    snapshot of links into blobs named by sha256); the snapshot's folder."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    snapshot = folder / "snapshots" / COMMIT
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(COMMIT)
    (folder / "blobs").mkdir(exist_ok=True)
    for name, source in files.items():
        data = source if isinstance(source, bytes) else source.read_bytes()
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../" * (name.count("/") + 2)) / "blobs" / blob.name)
    return snapshot


@contextmanager
def serving_fake_hub(hub: FakeHub | None = None) -> Iterator[FakeHub]:
    """Serve ``hub`` on a free loopback port (``hub.endpoint``) until the block ends."""
    hub = hub or FakeHub()
    handler = type("Handler", (_Handler,), {"hub": hub})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    hub.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        for event in hub.hold.values():
            event.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
