"""Hooks: the plugin interface and its plumbing.

Owns the hook specifications and markers, the data types hooks receive (the public API that
``router/__init__.py`` re-exports), loading plugins and calling hooks. The built-in behaviour
(``router/default_plugins/``) implements these hooks like any deployer's plugin.

May import: the base modules only. Imported by ``edge``, ``models`` and the server.
"""
