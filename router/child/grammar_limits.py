"""How large and how deep a GBNF grammar may be before llama.cpp is given it.

llama.cpp parses a grammar, and walks its rules, by recursion on the C stack: a grammar with
some 20,000 nested groups (``((((...))))``), or a chain of 60,000 to 100,000 rules each starting
with the next, overflows it and the process dies of a segmentation fault, whatever the
request's own fate. Sampling time also grows faster than the grammar (200,000 alternatives
stall every generation of the model for over a minute a token). So every grammar, whether a
client wrote it or it was made from a JSON schema or from tools, is measured here first;
the bounds stay three times or more under the depths measured to crash on an 8 MiB stack, and
leave room for 128 tools with large schemas (some 370 KB of grammar).
"""

from __future__ import annotations

import re

MAX_GRAMMAR_BYTES = 512 * 1024
MAX_GRAMMAR_RULES = 20_000
MAX_GRAMMAR_NESTING = 1_000

# What can hold a parenthesis that is not a group: literals, character classes, comments.
_GROUPING = re.compile(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|#[^\n]*|[()]')


def grammar_limit_exceeded(grammar: str) -> str | None:
    """Why ``grammar`` is too large or too deep for llama.cpp, in words for the client, or
    None when it is within bounds (which says nothing about whether it parses)."""
    size = len(grammar.encode("utf-8", errors="surrogatepass"))
    if size > MAX_GRAMMAR_BYTES:
        return f"is {size} bytes long; a grammar may have at most {MAX_GRAMMAR_BYTES}"
    rules = grammar.count("::=")  # one too many for a literal that spells it: harmless
    if rules > MAX_GRAMMAR_RULES:
        return f"defines {rules} rules; a grammar may have at most {MAX_GRAMMAR_RULES}"
    depth = deepest = 0
    for match in _GROUPING.finditer(grammar):
        piece = match.group()
        if piece == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif piece == ")":
            depth = max(0, depth - 1)
    if deepest > MAX_GRAMMAR_NESTING:
        return (
            f"nests groups {deepest} deep; a grammar may nest them at most "
            f"{MAX_GRAMMAR_NESTING} deep"
        )
    return None
