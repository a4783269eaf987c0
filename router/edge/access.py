"""Where the router may be reached from, beyond its keys: the rules a web browser cannot break.

* **Host.** A page on ``evil.example`` can point its own name at 127.0.0.1 (DNS rebinding)
  and then read the router's answers as its own origin's. Its requests still carry
  ``Host: evil.example``, so every route but ``/health`` answers only names the operator
  meant: the bound address, ``localhost``, loopback addresses, ``--allowed-host`` names, and,
  when bound to every address (``0.0.0.0``, ``::``), any IP address, which no rebinding
  page can send as its own name.
* **JSON only.** A page may send a form or a plain ``fetch`` POST to any address without
  asking (no CORS preflight), but never one with ``Content-Type: application/json``. Routes
  that change the router's state take nothing else, so no page can forge them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from router.errors import PermissionDenied, UnsupportedMediaType
from router.hosts import host_name

_HOST_HEADER = re.compile(r"(?P<name>\[[^\]]*\]|[^:\[\]]*)(?::(?P<port>[0-9]{1,5}))?")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` (``--host``) keeps the router on this machine."""
    name = host_name(host)
    if name is None:
        return False
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


@dataclass(frozen=True)
class HostCheck:
    """Which ``Host`` headers a router bound to some address answers."""

    names: frozenset[str]
    accepts_any_ip: bool  # bound to every address: any of the machine's may be used

    @classmethod
    def for_address(cls, bound: str, allowed_hosts: Iterable[str] = ()) -> HostCheck:
        names = {"localhost"}
        for host in (bound, *allowed_hosts):
            name = host_name(host)
            if name is not None:
                names.add(name)
        bound_ip = _ip(host_name(bound) or "")
        return cls(frozenset(names), bound_ip is not None and bound_ip.is_unspecified)

    def allows(self, header: str | None) -> bool:
        """Whether a request with this ``Host`` header (None: none sent) may be answered.

        A request without one is no browser's (HTTP/1.1 browsers always send it).
        """
        if header is None:
            return True
        match = _HOST_HEADER.fullmatch(header.strip())
        name = host_name(match.group("name")) if match else None
        if name is None:
            return False
        if name in self.names:
            return True
        ip = _ip(name)
        return ip is not None and (ip.is_loopback or self.accepts_any_ip)

    def check(self, header: str | None) -> None:
        """Raise PermissionDenied, saying what to do, unless ``header`` is allowed."""
        if not self.allows(header):
            shown = (header or "")[:100]
            raise PermissionDenied(
                f"this router does not answer to the host name {shown!r} (a web page may be "
                "trying to reach it through DNS rebinding); call it by its address, or start "
                "it with --allowed-host NAME"
            )


def require_json(method: str, content_type: str | None, has_body: bool) -> None:
    """Raise UnsupportedMediaType unless the request declares a JSON body.

    Only a DELETE without a body may go without: browsers never send one unasked.
    """
    if method == "DELETE" and not has_body and content_type is None:
        return
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise UnsupportedMediaType(
            f"{method} here takes a JSON body sent as 'Content-Type: application/json', not "
            f"{(content_type or 'none')[:100]!r} (so that no web page can send it as a form)"
        )
