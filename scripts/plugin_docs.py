"""Write the hook reference of docs/plugins.md from the hookspec docstrings.

Usage: .venv/bin/python scripts/plugin_docs.py        (rewrites the part between the markers)
tests/test_plugins.py fails when a hookspec is missing from the page.
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

from router import hookspecs

PAGE = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"
BEGIN, END = "<!-- hook reference: begin -->", "<!-- hook reference: end -->"


def reference() -> str:
    sections = []
    for name, function in inspect.getmembers(hookspecs, inspect.isfunction):
        options = getattr(function, "llama_router_spec", None)
        if options is None:
            continue
        signature = str(inspect.signature(function)).replace("'", "")
        first = " (first result wins)" if options.get("firstresult") else ""
        doc = inspect.cleandoc(function.__doc__ or "")
        sections.append(f"### `{name}{signature}`{first}\n\n{doc}\n")
    return "\n".join(sections)


def main() -> int:
    page = PAGE.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
    PAGE.write_text(pattern.sub(lambda _: f"{BEGIN}\n\n{reference()}\n{END}", page))
    return 0


if __name__ == "__main__":
    sys.exit(main())
