"""Every model option and llama-server flag the router knows, defined once.

One row per option: its conf.d ``[args]`` key, llama-server's spellings (``common/arg.cpp`` in
the llama.cpp that llama-cpp-python vendors is the contract), its ``LLAMA_ARG_*`` variable,
kind, bounds, default and help, and whether a client may set it through ``POST /models/load``
args. The child's parser (``router/model_options.py``), the router's "defaults passed to every
model" flags (``router/cli.py``), conf.d ``[args]`` checking (``router/models/confd.py``), the
extra-args allowlist (``router/edge/extra_args.py``), ``--help`` and the table in
docs/configuration.md are all generated from these rows, so they cannot drift apart.

A base module: the child imports it, so it imports nothing but the standard library.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["int", "float", "str", "path", "bool", "negated", "choice"]
INT32 = (-(2**31), 2**31 - 1)
MAX_GPU_LAYERS = 999  # llama.cpp's own "every layer"
MAX_CLIENT_PARALLEL = 16
MAX_CLIENT_BATCH = 16384
CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")


@dataclass(frozen=True)
class ModelOption:
    """One option of a model's child process.

    ``flags`` are llama-server's spellings, short first; the last one is what the router
    writes on a child's command line. ``client_bounds`` is set when a client may send the
    option with ``POST /models/load`` (``--models-allow-extra-args``): ``"ctx"`` and
    ``"cpus"`` stand for the model's trained context and the machine's CPUs.
    """

    key: str
    flags: tuple[str, ...]
    kind: Kind
    default: Any
    help: str
    env: str | None = None
    bounds: tuple[float, float] | None = None
    choices: tuple[str, ...] = ()
    client_bounds: tuple[int | str, int | str] | None = None
    group: Literal["model", "server"] = "model"
    client: bool = False  # a choice a client may set (its choices bound it)
    words: tuple[tuple[str, Any], ...] = ()  # llama-server's words for numbers ("all": -1)

    @property
    def child_flag(self) -> str:
        return self.flags[-1]

    @property
    def is_client_settable(self) -> bool:
        return self.client_bounds is not None or self.client


MODEL_OPTIONS: tuple[ModelOption, ...] = (
    ModelOption("ctx_size", ("-c", "--ctx-size"), "int", 4096,
                "context size in tokens, split evenly between the --parallel slots "
                "(0: the model's)", env="LLAMA_ARG_CTX_SIZE", bounds=(0, INT32[1]),
                client_bounds=(0, "ctx")),
    ModelOption("n_gpu_layers", ("-ngl", "--gpu-layers", "--n-gpu-layers"), "int", -1,
                "layers to offload to the GPU (-1: all)", env="LLAMA_ARG_N_GPU_LAYERS",
                bounds=(-1, INT32[1]), client_bounds=(0, MAX_GPU_LAYERS),
                words=(("auto", -1), ("all", -1))),
    ModelOption("threads", ("-t", "--threads"), "int", 0,
                "generation threads (0: the physical cores, as llama-server)",
                env="LLAMA_ARG_THREADS", bounds=(0, INT32[1]), client_bounds=(1, "cpus")),
    ModelOption("threads_batch", ("-tb", "--threads-batch"), "int", 0,
                "prompt-processing threads (0: same as --threads)", bounds=(0, INT32[1]),
                client_bounds=(1, "cpus")),
    ModelOption("batch_size", ("-b", "--batch-size"), "int", 2048, "logical batch size",
                env="LLAMA_ARG_BATCH", bounds=(1, INT32[1]),
                client_bounds=(1, MAX_CLIENT_BATCH)),
    ModelOption("ubatch_size", ("-ub", "--ubatch-size"), "int", 512, "physical batch size",
                env="LLAMA_ARG_UBATCH", bounds=(1, INT32[1]),
                client_bounds=(1, MAX_CLIENT_BATCH)),
    ModelOption("parallel", ("-np", "--parallel"), "int", 1,
                "requests decoded at once, in one batch; each slot gets --ctx-size / N tokens",
                env="LLAMA_ARG_N_PARALLEL", bounds=(1, INT32[1]),
                client_bounds=(1, MAX_CLIENT_PARALLEL)),
    ModelOption("slot_prompt_similarity", ("-sps", "--slot-prompt-similarity"), "float", 0.1,
                "a request goes to the slot whose cached tokens start its prompt, when they "
                "are more than this part of it; else to the slot used longest ago (0: never)",
                bounds=(0.0, 1.0)),
    ModelOption("chat_template", ("--chat-template",), "str", None,
                "built-in template name (chatml, llama3, mistral) or a Jinja template "
                "(default: the GGUF's, else chatml)", env="LLAMA_ARG_CHAT_TEMPLATE"),
    ModelOption("reasoning_format", ("--reasoning-format",), "choice", "auto",
                "where <think> thoughts go: none leaves them in the content; deepseek and auto "
                "move them to reasoning_content; deepseek-legacy copies them there",
                env="LLAMA_ARG_THINK", choices=("none", "auto", "deepseek", "deepseek-legacy")),
    ModelOption("embeddings", ("--embedding", "--embeddings"), "bool", False,
                "serve /v1/embeddings (for embedding models)", env="LLAMA_ARG_EMBEDDINGS"),
    ModelOption("pooling", ("--pooling",), "choice", "model",
                "pooling for embeddings (model: what the GGUF says)", env="LLAMA_ARG_POOLING",
                choices=("model", "none", "mean", "cls", "last", "rank")),
    ModelOption("reranking", ("--rerank", "--reranking"), "bool", False,
                "serve /v1/rerank (for reranker models): --embeddings --pooling rank",
                env="LLAMA_ARG_RERANKING"),
    ModelOption("mmproj", ("-mm", "--mmproj"), "path", None,
                "the model's multimodal projector (default: its folder's mmproj*.gguf)",
                env="LLAMA_ARG_MMPROJ"),
    ModelOption("flash_attn", ("-fa", "--flash-attn"), "choice", "auto", "flash attention",
                env="LLAMA_ARG_FLASH_ATTN", choices=("on", "off", "auto"), client=True),
    ModelOption("cache_type_k", ("-ctk", "--cache-type-k"), "choice", "f16",
                "KV cache data type for K", env="LLAMA_ARG_CACHE_TYPE_K", choices=CACHE_TYPES),
    ModelOption("cache_type_v", ("-ctv", "--cache-type-v"), "choice", "f16",
                "KV cache data type for V", env="LLAMA_ARG_CACHE_TYPE_V", choices=CACHE_TYPES),
    ModelOption("mmap", ("--no-mmap",), "negated", True, "read the file instead of mmap"),
    ModelOption("mlock", ("--mlock",), "bool", False, "keep the model in RAM"),
    ModelOption("seed", ("-s", "--seed"), "int", -1, "default sampling seed (-1: random)",
                bounds=(-1, 2**32 - 1)),
    ModelOption("temp", ("--temp", "--temperature"), "float", 0.8,
                "temperature of requests that set none (0: greedy)",
                env="LLAMA_ARG_TEMPERATURE", bounds=(0.0, 1e6)),
    ModelOption("n_predict", ("-n", "--predict", "--n-predict"), "int", -1,
                "max_tokens of requests that set none (-1: until the end of generation or "
                "of the context)", env="LLAMA_ARG_N_PREDICT", bounds=(-1, INT32[1])),
    ModelOption("max_queue", ("--max-queue",), "int", 64,
                "requests that may wait for a free slot before 429", bounds=(0, 10**6),
                group="server"),
)  # fmt: skip
OPTIONS_BY_KEY: dict[str, ModelOption] = {option.key: option for option in MODEL_OPTIONS}


@dataclass(frozen=True)
class CompatFlag:
    """A llama-server flag the router accepts for a drop-in, though it changes nothing here:
    ``help`` says why. ``takes`` is the kind of its value, or None for a switch."""

    key: str
    flags: tuple[str, ...]
    help: str
    env: str | None = None
    negative: tuple[str, ...] = ()
    takes: Literal["int", "float", "str"] | None = None
    is_router_only: bool = False  # a child has a flag of the same spelling that does act


COMPAT_FLAGS: tuple[CompatFlag, ...] = (
    CompatFlag("jinja", ("--jinja",), "accepted: a child always renders the GGUF's Jinja chat "
               "template (or --chat-template)", "LLAMA_ARG_JINJA", ("--no-jinja",)),
    CompatFlag("webui", ("--ui", "--webui"), "accepted: the router's page is served at /",
               "LLAMA_ARG_UI", ("--no-ui", "--no-webui")),
    CompatFlag("metrics", ("--metrics",), "accepted: /metrics is always on",
               "LLAMA_ARG_ENDPOINT_METRICS"),
    CompatFlag("slots", ("--slots",), "accepted: the children's slots are internal",
               "LLAMA_ARG_ENDPOINT_SLOTS", ("--no-slots",)),
    CompatFlag("offline", ("--offline",), "accepted: the router downloads only what it is asked to",
               "LLAMA_ARG_OFFLINE"),
    CompatFlag("threads_http", ("--threads-http",), "accepted: connections are served by one "
               "event loop, not a thread pool", "LLAMA_ARG_THREADS_HTTP", takes="int"),
    CompatFlag("alias", ("-a", "--alias"), "with -m, the model's id; else accepted: the router "
               "names each model by its file or conf.d name (aliases go in conf.d), as "
               "llama-server's router overwrites it", "LLAMA_ARG_ALIAS", takes="str",
               is_router_only=True),
    CompatFlag("spec_draft_hf", ("-hfd", "-hfrd", "--hf-repo-draft", "--spec-draft-hf"),
               "accepted and ignored: the built-in child has no speculative decoding, so the "
               "draft model (ORG/REPO[:QUANT]) is never loaded; a preset's draft in the cache "
               "is hidden from GET /models with dedup-cache-models", "LLAMA_ARG_SPEC_DRAFT_HF_REPO",
               takes="str"),
)  # fmt: skip

# llama-server's variables for the router's own flags (router/cli.py), besides LLAMA_ROUTER_*.
ROUTER_FLAG_ENV: dict[str, str] = {
    "host": "LLAMA_ARG_HOST",
    "port": "LLAMA_ARG_PORT",
    "api-key": "LLAMA_API_KEY",
    "api-key-file": "LLAMA_ARG_API_KEY_FILE",
    "model": "LLAMA_ARG_MODEL",
    "models-dir": "LLAMA_ARG_MODELS_DIR",
    "models-max": "LLAMA_ARG_MODELS_MAX",
    "models-autoload": "LLAMA_ARG_MODELS_AUTOLOAD",
    "models-preset": "LLAMA_ARG_MODELS_PRESET",
    "timeout": "LLAMA_ARG_TIMEOUT",
}


def checked_value(option: ModelOption, text: str) -> Any:
    """``text`` (a flag's value or a variable's) as ``option``'s value; ValueError says why."""
    word = dict(option.words).get(text)
    if word is not None:
        return word
    if option.kind == "int":
        value: Any = int(text)
    elif option.kind == "float":
        value = float(text)
    elif option.kind == "choice":
        if text not in option.choices:
            raise ValueError(f"must be one of {', '.join(option.choices)}, not {text!r}")
        return text
    elif option.kind in ("bool", "negated"):
        truth = parse_bool(text)
        return truth if option.kind == "bool" else not truth
    else:
        return text
    check_bounds(option, value)
    return value


def check_bounds(option: ModelOption, value: float) -> None:
    """ValueError unless ``value`` lies within ``option``'s bounds."""
    if option.bounds is not None and not option.bounds[0] <= value <= option.bounds[1]:
        low, high = option.bounds
        raise ValueError(f"must be from {low} to {high}, not {value}")


def parse_bool(text: str) -> bool:
    """A switch's variable, as llama.cpp reads it (and yes/no)."""
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on", "enabled"):
        return True
    if lowered in ("0", "false", "no", "off", "disabled"):
        return False
    raise ValueError("use 1/true/on/enabled or 0/false/off/disabled")


def argparse_type(option: ModelOption) -> Any:
    """A ``type=`` for argparse that checks the option's kind and bounds."""

    def convert(text: str) -> Any:
        try:
            return checked_value(option, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = option.kind  # argparse names it in "invalid int value"
    return convert


def add_model_option(
    group: Any, option: ModelOption, *, default: Any, help_suffix: str = ""
) -> None:
    """``option`` as an argparse argument of ``group``, stored under its key."""
    text = option.help + help_suffix
    if option.kind in ("bool", "negated"):
        group.add_argument(*option.flags, dest=option.key, action="store_const",
                           const=option.kind == "bool", default=default, help=text)  # fmt: skip
    elif option.kind == "choice":
        is_long = len(option.choices) > 4  # named in the help, not in every usage line
        listed = f"{text}; one of {', '.join(option.choices)}" if is_long else text
        group.add_argument(*option.flags, dest=option.key, choices=option.choices,
                           metavar="TYPE" if is_long else None, default=default,
                           help=listed)  # fmt: skip
    else:
        metavar = {"int": "N", "float": "N", "str": "TEXT", "path": "FILE"}[option.kind]
        group.add_argument(*option.flags, dest=option.key, type=argparse_type(option),
                           metavar=metavar, default=default, help=text)  # fmt: skip


def add_compat_flags(group: Any, *, is_router: bool) -> None:
    """llama-server's flags that are accepted and change nothing (COMPAT_FLAGS)."""
    for flag in COMPAT_FLAGS:
        if flag.is_router_only and not is_router:
            continue
        dest = "compat_" + flag.key
        if flag.takes is None:
            negative = f" ({', '.join(flag.negative)} too)" if flag.negative else ""
            group.add_argument(*flag.flags, dest=dest, action="store_true",
                               help=flag.help + negative)  # fmt: skip
            if flag.negative:
                group.add_argument(*flag.negative, dest=dest, action="store_false",
                                   help=argparse.SUPPRESS)  # fmt: skip
        else:
            kind = {"int": int, "float": float, "str": str}[flag.takes]
            group.add_argument(*flag.flags, dest=dest, type=kind, metavar="N" if kind is not str
                               else "TEXT", help=flag.help)  # fmt: skip


def child_argv(options: Mapping[str, Any]) -> list[str]:
    """The child's command-line flags for ``options`` (keys of MODEL_OPTIONS)."""
    argv: list[str] = []
    for key, value in options.items():
        option = OPTIONS_BY_KEY[key]
        if option.kind == "bool":
            argv += [option.child_flag] if value else []
        elif option.kind == "negated":
            argv += [] if value else [option.child_flag]
        elif key == "flash_attn" and isinstance(value, bool):
            argv += [option.child_flag, "on" if value else "off"]
        else:
            argv += [option.child_flag, str(value)]
    return argv


def options_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """Model options set by llama-server's ``LLAMA_ARG_*`` variables; ValueError names one."""
    options: dict[str, Any] = {}
    for option in MODEL_OPTIONS:
        if option.env is None or option.env not in environ:
            continue
        try:
            options[option.key] = checked_value(option, environ[option.env])
        except ValueError as exc:
            raise ValueError(f"{option.env}={environ[option.env]!r}: {exc}") from None
    return options


def strays(argv: Sequence[str], known: Iterable[str], switches: Iterable[str]) -> str | None:
    """The first argument of ``argv`` that is a single-dash option argparse would misread.

    argparse reads ``-ctk`` as ``-c tk`` when ``-ctk`` is unknown, and llama-server never glues
    a value to a short flag: a single-dash word is an option only when it is one exactly, or
    repeats one switch (``-vv``).
    """
    known_set, switch_set = set(known), set(switches)
    for argument in argv:
        if argument == "--":
            return None
        if not argument.startswith("-") or argument.startswith("--") or len(argument) < 2:
            continue
        if argument in known_set or _is_number(argument):
            continue
        if all("-" + letter in switch_set for letter in argument[1:]):
            continue
        return argument
    return None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def nearest(unknown: str, known: Iterable[str]) -> str | None:
    """The supported option spelled most like ``unknown`` (difflib), if any is close."""
    name = unknown.split("=", 1)[0]
    names = list(known)
    bare = name.lstrip("-")
    longer = sorted((n for n in names if bare and n.lstrip("-").startswith(bare)), key=len)
    if longer:  # -ctx: --ctx-size
        return longer[0]
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    return close[0] if close else None


def docs_table() -> str:
    """The Markdown table of model options in docs/configuration.md (between its markers)."""
    rows = [
        "| `[args]` key | flags | variable | default | a client may set | what it does |",
        "|---|---|---|---|---|---|",
    ]
    for option in MODEL_OPTIONS:
        flags = ", ".join(f"`{flag}`" for flag in option.flags)
        values = f" ({', '.join(option.choices)})" if option.choices else ""
        default = "" if option.default is None else f"`{_toml(option.default)}`"
        client = "yes" if option.is_client_settable else ""
        if option.client_bounds is not None:
            low, high = option.client_bounds
            client = f"{low} to {_bound_name(high)}"
        rows.append(
            f"| `{option.key}` | {flags} | {option.env or ''} | {default} | {client} | "
            f"{option.help.replace('<', '&lt;')}{values} |"
        )
    rows += ["", "Accepted for llama-server's command lines, changing nothing here:", ""]
    rows += ["| flags | variable | why |", "|---|---|---|"]
    for flag in COMPAT_FLAGS:
        spellings = ", ".join(f"`{name}`" for name in (*flag.flags, *flag.negative))
        rows.append(f"| {spellings} | {flag.env or ''} | {flag.help} |")
    return "\n".join(rows) + "\n"


DOCS_START = "<!-- options table: generated by `python -m router.options_table`; do not edit -->"
DOCS_END = "<!-- end of the options table -->"


def with_docs_table(text: str) -> str:
    """``text`` (docs/configuration.md) with the part between the markers made anew."""
    head, start, rest = text.partition(DOCS_START)
    _, end, tail = rest.partition(DOCS_END)
    if not start or not end:
        raise ValueError("the options table's markers are missing")
    return f"{head}{DOCS_START}\n{docs_table()}{DOCS_END}{tail}"


def _bound_name(bound: int | str) -> str:
    return {"ctx": "the model's trained context", "cpus": "the CPUs"}.get(str(bound), str(bound))


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) else str(value)


class OptionParser(argparse.ArgumentParser):
    """An ArgumentParser that reads a command line as llama-server does.

    No abbreviations, no value glued to a single-dash flag (``-ctk q8_0`` is never ``-c tk``),
    and an option it does not know is refused by name with the nearest supported one, in one
    line, exit status 2.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self._subparsers is not None:  # a command's own parser checks what follows it
            return super().parse_known_args(args, namespace)
        argv = list(sys.argv[1:] if args is None else args)
        switches = [
            name
            for action in self._actions
            if action.nargs == 0
            for name in action.option_strings
            if len(name) == 2
        ]
        stray = strays(argv, self._option_string_actions, switches)
        if stray is not None:
            self.refuse_unknown(stray)
        parsed, extras = super().parse_known_args(argv, namespace)
        unknown = next((extra for extra in extras if extra.startswith("-")), None)
        if unknown is not None:
            self.refuse_unknown(unknown)
        return parsed, extras

    def refuse_unknown(self, option: str) -> None:
        """Exit 2 with one line: ``option`` is not supported; the nearest one that is."""
        shown = option.split("=", 1)[0][:60]
        close = nearest(shown, self._option_string_actions)
        hint = f"; the nearest supported option is {close}" if close else ""
        self.exit(2, f"{self.prog}: error: unsupported option {shown}{hint}\n")


if __name__ == "__main__":  # python -m router.options_table: rewrite the docs' table
    from pathlib import Path

    docs = Path(__file__).parent.parent / "docs" / "configuration.md"
    docs.write_text(with_docs_table(docs.read_text(encoding="utf-8")), encoding="utf-8")
