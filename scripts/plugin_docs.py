"""Write the hook and data-type reference of docs/plugins.md from the code's docstrings.

Usage: .venv/bin/python scripts/plugin_docs.py        (rewrites the parts between the markers)
The hooks come from router/hooks/hookspecs.py; the data types (what ``router`` exports for
hooks) from router/hooks/plugin_types.py, each field documented by the string below it.
tests/test_plugins.py fails when a hookspec, a type, a field or a method is missing from the page.
"""

from __future__ import annotations

import ast
import inspect
import re
import sys
from pathlib import Path

import router
from router.hooks import hookspecs, plugin_types
from router.hooks.hookspecs import ASYNC_CAPABLE_HOOKS

PAGE = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"
HOOKS = ("<!-- hook reference: begin -->", "<!-- hook reference: end -->")
TYPES = ("<!-- data types: begin -->", "<!-- data types: end -->")


def hook_reference() -> str:
    sections = []
    for name, function in inspect.getmembers(hookspecs, inspect.isfunction):
        options = getattr(function, "llama_router_spec", None)
        if options is None:
            continue
        signature = str(inspect.signature(function)).replace("'", "")
        first = " (first result wins)" if options.get("firstresult") else ""
        doc = inspect.cleandoc(function.__doc__ or "")
        wrappers = (
            "" if name in ASYNC_CAPABLE_HOOKS else "\n\nTakes hook wrappers (`wrapper=True`)."
        )
        sections.append(f"### `{name}{signature}`{first}\n\n{doc}{wrappers}\n")
    return "\n".join(sections)


def public_types() -> list[str]:
    """The names ``router`` exports from ``plugin_types``, in the module's order."""
    tree = ast.parse(Path(plugin_types.__file__).read_text())
    exported = set(router.__all__)
    return [n.name for n in tree.body if isinstance(n, ast.ClassDef) and n.name in exported]


def members(class_name: str) -> list[tuple[str, str]]:
    """(heading, docstring) for each field (``name: type`` and the string below it), public
    method and property of ``class_name`` in plugin_types.py, in source order."""
    tree = ast.parse(Path(plugin_types.__file__).read_text())
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    found = []
    for index, item in enumerate(node.body):
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            following = node.body[index + 1] if index + 1 < len(node.body) else None
            doc = ""
            if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
                doc = str(following.value.value)
            default = f" = {ast.unparse(item.value)}" if item.value is not None else ""
            if "default_factory" in default:
                default = " = {}"
            heading = f"{item.target.id}: {ast.unparse(item.annotation)}{default}"
            found.append((heading, doc))
        elif isinstance(item, ast.FunctionDef) and not item.name.startswith("_"):
            returns = ast.unparse(item.returns) if item.returns is not None else "None"
            is_property = any(ast.unparse(d) == "property" for d in item.decorator_list)
            arguments = [a.arg for a in item.args.args[1:]]
            call = "" if is_property else f"({', '.join(arguments)})"
            heading = f"{item.name}{call} -> {returns}"
            found.append((heading, ast.get_docstring(item) or ""))
    return found


def types_reference() -> str:
    sections = []
    for name in public_types():
        doc = inspect.cleandoc(getattr(plugin_types, name).__doc__ or "")
        lines = [f"### `{name}`", "", doc, ""]
        for heading, member_doc in members(name):
            text = " ".join(inspect.cleandoc(member_doc).split("\n\n")[0].split())
            rest = inspect.cleandoc(member_doc).split("\n\n")[1:]
            lines.append(f"- `{heading}`: {text}")
            lines.extend(f"\n  {' '.join(paragraph.split())}" for paragraph in rest)
        sections.append("\n".join(lines) + "\n")
    return "\n".join(sections)


def _replace(page: str, markers: tuple[str, str], text: str) -> str:
    begin, end = markers
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(page):
        raise SystemExit(f"docs/plugins.md lacks the markers {begin} ... {end}")
    return pattern.sub(lambda _: f"{begin}\n\n{text}\n{end}", page)


def main() -> int:
    page = PAGE.read_text()
    page = _replace(page, HOOKS, hook_reference())
    page = _replace(page, TYPES, types_reference())
    PAGE.write_text(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
