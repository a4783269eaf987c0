"""The HTTP edge: what a client's request meets first.

Owns the routes (llama-server's router contract), error bodies, the access rules (keys, Host,
JSON-only changes), the HTTP server's connection handling, reading bodies, the config API's
file edits, client-given child arguments, and forwarding a request to its model's child with
the answer's token count. Routes decide nothing about models: they resolve the request's model
once and hand its state to ``models`` (the pool) and the proxy.

May import: ``router.models``, ``router.processes`` (the child connection, ``wire``),
``router.hooks``, and the base modules (``errors``, ``settings``, ``spec``, ``child_options``,
``options_table``).
Never imported by ``models``, ``processes`` or ``hooks``.
"""
