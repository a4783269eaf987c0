"""Processes: running, watching and stopping children, and talking to them.

Owns the supervisor (one nursery for every child), the kinds of child (our own, with the
lifeline and spares; external commands, under the guard), the shared stop sequence and
liveness checks, the lifeline protocol (both halves) and the HTTP/1.1 client for children.
It reports what happens (ready, exited) and decides nothing.

May import: the base modules (``errors``, ``spec``, ``child_options``, ``options_table``) only:
never ``router.models``, ``router.edge`` or ``router.hooks``. The model child imports
``lifeline`` from here, so this package's import must stay light.
"""
