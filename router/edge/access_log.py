"""One access line per request: when, who, what, for which model, how it ended, how long it
took, the tokens it used, and whether it waited for a load or a slot.

The lines go to the ``router.access`` logger at INFO (shown by default), made from the records
that ``observe.observed`` reports for both paths, early refusals included. Every field a client
chose (the path, the model's name) is hostile: printed with ``printable``, so that no header,
path or name can end a line early or forge another one. ``logs.py`` writes each line as text,
or as one JSON object (the fields below under ``access``) with ``--log-format json``.
"""

from __future__ import annotations

import logging
from typing import Any

from router.edge.observe import RequestRecord
from router.logs import printable

log = logging.getLogger("router.access")


def access_fields(record: RequestRecord) -> dict[str, Any]:
    """The line's fields, by name (the JSON format's ``access`` object)."""
    usage = record.usage
    return {
        "client": record.client,
        "method": record.method,
        "path": record.path,
        "model": record.model or record.requested_model,
        "status": record.status,
        "duration_ms": round(record.duration_s * 1000, 3),
        "tokens_in": usage.prompt_tokens if usage is not None else None,
        "tokens_out": usage.completion_tokens if usage is not None else None,
        "waited_for_load": record.waited_for_load,
        "waited_for_slot": record.waited_for_slot,
        "queue_wait_ms": round(record.queue_wait_s * 1000, 3),
        "cut": record.is_cut,
        "agent": record.agent,
    }


def access_line(fields: dict[str, Any]) -> str:
    """The text line: ``CLIENT "METHOD PATH" STATUS MSms model="M" tokens=IN/OUT waited=W
    [queued=MSms] [cut] agent="USER-AGENT"``; ``-`` where there is nothing to say."""
    waited = [
        name for name, flag in (("load", fields["waited_for_load"]),
                                ("slot", fields["waited_for_slot"])) if flag
    ]  # fmt: skip
    tokens = "/".join(
        "-" if n is None else str(n) for n in (fields["tokens_in"], fields["tokens_out"])
    )
    parts = [
        printable(fields["client"]) or "-",
        f'"{printable(fields["method"], quoted=True)} {printable(fields["path"], quoted=True)}"',
        str(fields["status"]),
        f"{fields['duration_ms']:.1f}ms",
        f'model="{printable(fields["model"], quoted=True)}"' if fields["model"] else "model=-",
        f"tokens={tokens}",
        "waited=" + ("+".join(waited) or "-"),
    ]
    if waited:
        parts.append(f"queued={fields['queue_wait_ms']:.1f}ms")
    if fields["cut"]:
        parts.append("cut")
    parts.append(f'agent="{printable(fields["agent"], quoted=True)}"')
    return " ".join(parts)


def log_request(record: RequestRecord) -> None:
    """Write ``record``'s access line (``observe.observed``'s report)."""
    if log.isEnabledFor(logging.INFO):
        fields = access_fields(record)
        log.info("%s", access_line(fields), extra={"access": fields})
