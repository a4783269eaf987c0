"""Models: which exist, their state, and the rules that decide what runs.

Owns the catalog (models folders), conf.d and router.toml, watching them, the pool (each
model's state machine and the queue of requests) and the scheduler's pure rules (LRU, FIFO,
coalesced loads, backoff). The pool decides; ``processes`` carries out.

May import: ``router.processes``, ``router.hooks`` and the base modules. Never imports
``router.edge``.
"""
