"""Host names as the router compares them: for ``--host``/``--allowed-host`` values (settings)
and ``Host`` headers (the edge's DNS-rebinding check), one rule for both."""

from __future__ import annotations

import ipaddress
import re

_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?")


def host_name(value: str) -> str | None:
    """``value`` (a name or an IP address, with no port) in the form Host headers are compared
    in: lower case, no trailing dot, IP addresses in their shortest form; None if it is neither.
    """
    value = value.strip().lower()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
        try:
            return str(ipaddress.IPv6Address(value))
        except ValueError:
            return None
    value = value.removesuffix(".")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    return value if _HOST_NAME.fullmatch(value) and len(value) <= 253 else None
