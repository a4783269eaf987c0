"""``python -m bench.gpu``: our child against llama-server on a GPU, aggregate tokens/s.

Run by bench/gpu.sh on a lent GPU machine (see bench/README.md), with llama-cpp-python's
Python files on the path and ``LLAMA_CPP_LIB_PATH`` pointing at a CUDA build of the llama.cpp
it vendors (scripts/build_llama_cpp.sh --cuda). Gemma cannot travel there, so the model is a
random-weight llama written here: about 1B parameters in f16 (16 layers, 2048 wide, 8192
feed-forward), the byte vocabulary of tests/tiny_models.py. Both servers get the model,
``-ngl 99``, and the same ``-c`` and ``-np``; each level of concurrency runs on both, in
alternating order.

Usage: python -m bench.gpu --llama-server PATH [--out DIR] [--streams 1,8,32] [--tokens N]
                           [--small] [--child-ctx-per-slot] [--model PATH] [--write-model]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gguf
import numpy as np
import trio

from bench import harness
from bench.engine import OURS, THEIRS, Layout, concurrent_tokens
from bench.harness import Results, median
from tests.tiny_models import byte_vocabulary

MODEL_NAME = "random-llama-1b-f16.gguf"
SMALL_MODEL_NAME = "random-llama-small-f16.gguf"


def write_llama_f16(
    path: Path, *, n_embd: int = 2048, n_layers: int = 16, n_heads: int = 16,
    n_heads_kv: int = 4, n_ff: int = 8192, context_length: int = 8192,
) -> Path:  # fmt: skip
    """A llama GGUF with random f16 weights (one random matrix per shape, shared by the layers:
    the speed is the same, the writing 16 times faster)."""
    rng = np.random.default_rng(0)
    tokens, scores, types = byte_vocabulary()
    head_dim = n_embd // n_heads
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("random-llama-f16")
    writer.add_context_length(context_length)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_heads)
    writer.add_head_count_kv(n_heads_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)

    shared: dict[tuple[int, ...], np.ndarray] = {}

    def weights(*shape: int) -> np.ndarray:
        if shape not in shared:
            values = rng.standard_normal(shape, dtype=np.float32) * 0.02
            shared[shape] = values.astype(np.float16)
        return shared[shape]

    def ones(size: int) -> np.ndarray:
        return np.ones(size, dtype=np.float32)

    writer.add_tensor("token_embd.weight", weights(len(tokens), n_embd))
    writer.add_tensor("output_norm.weight", ones(n_embd))
    writer.add_tensor("output.weight", weights(len(tokens), n_embd))
    for layer in range(n_layers):
        block = f"blk.{layer}"
        writer.add_tensor(f"{block}.attn_norm.weight", ones(n_embd))
        writer.add_tensor(f"{block}.attn_q.weight", weights(n_embd, n_embd))
        writer.add_tensor(f"{block}.attn_k.weight", weights(n_heads_kv * head_dim, n_embd))
        writer.add_tensor(f"{block}.attn_v.weight", weights(n_heads_kv * head_dim, n_embd))
        writer.add_tensor(f"{block}.attn_output.weight", weights(n_embd, n_embd))
        writer.add_tensor(f"{block}.ffn_norm.weight", ones(n_embd))
        writer.add_tensor(f"{block}.ffn_gate.weight", weights(n_ff, n_embd))
        writer.add_tensor(f"{block}.ffn_up.weight", weights(n_ff, n_embd))
        writer.add_tensor(f"{block}.ffn_down.weight", weights(n_embd, n_ff))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_model(path: Path, *, small: bool) -> Path:
    """The bench's model at ``path`` (``small``: 4 layers, 256 wide, for a CPU dry run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if small:
        return write_llama_f16(path, n_embd=256, n_layers=4, n_heads=4, n_heads_kv=2, n_ff=512)
    return write_llama_f16(path)


def gpu_name() -> str:
    try:
        query = [
            "nvidia-smi",
            "--query-gpu=name,driver_version,memory.total",
            "--format=csv,noheader",
        ]
        return subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "no GPU found (nvidia-smi)"


def gpu_processes() -> str:
    """The processes holding GPU memory, as nvidia-smi lists them: both servers, if offloaded."""
    try:
        query = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader"]
        listing = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return "; ".join(line.strip() for line in listing.splitlines()) or "none"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--llama-server", type=Path, help="llama-server of the same build")
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    parser.add_argument("--model", type=Path, help="where the model is written (default: temp)")
    parser.add_argument("--streams", default="1,8,32", help="concurrency levels (default 1,8,32)")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per stream (default 128)")
    parser.add_argument("--small", action="store_true", help="a small model: a CPU dry run")
    parser.add_argument("--ngl", default="99", help="-ngl for both servers (default 99)")
    parser.add_argument("--child-ctx-per-slot", action="store_true",
                        help="the child's -c is per slot (before issue 11)")  # fmt: skip
    parser.add_argument("--write-model", action="store_true", help="only write --model, and stop")
    args = parser.parse_args()
    started = time.monotonic()
    if args.model is None:
        args.model = Path(tempfile.gettempdir()) / (SMALL_MODEL_NAME if args.small else MODEL_NAME)

    def progress(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    if not args.model.exists():
        progress(f"writing {args.model}")
        write_model(args.model, small=args.small)
        progress(f"wrote {args.model.stat().st_size / 2**30:.2f} GiB")
    if args.write_model:
        return 0
    levels = [int(level) for level in args.streams.split(",")]
    layout = Layout(ctx_total=512 * max(levels), parallel=max(levels))
    common = ["-ngl", args.ngl]
    ours = [*common, *layout.args(per_slot=args.child_ctx_per_slot)]
    theirs = [*common, *layout.args()]
    device = gpu_name()
    progress(f"device: {device}; both servers {' '.join(theirs)}")
    results = Results()
    child_port, server_port = harness.free_port(), harness.free_port()
    with (
        harness.serve(harness.our_child(args.model, child_port, *ours), child_port) as child,
        harness.serve(harness.llama_server(args.llama_server, args.model, server_port, *theirs),
                      server_port) as server,
    ):  # fmt: skip
        systems = [(OURS, child.base_url), (THEIRS, server.base_url)]
        model = args.model.stem
        for _, base in systems:
            trio.run(concurrent_tokens, base, model, 2, 8)  # warm-up
        progress(f"on the GPU: {gpu_processes()}")
        for streams in levels:
            rounds = 3 if streams == 1 else 2
            rates: dict[str, list[float]] = {OURS: [], THEIRS: []}
            for index in range(rounds):
                for name, base in systems if index % 2 == 0 else reversed(systems):
                    rates[name].append(trio.run(concurrent_tokens, base, model, streams,
                                                args.tokens))  # fmt: skip
            for name, values in rates.items():
                results.add(f"gpu_streams_{streams}", name, "tokens_per_s", median(values),
                            "tok/s")  # fmt: skip
            progress(f"{streams} streams done")
    table = [
        f"Device: {device}. Model: {args.model.name} ({args.model.stat().st_size / 2**30:.2f} "
        f"GiB), both servers {' '.join(theirs)}"
        + (f" (the child -c {layout.ctx_per_slot}, per slot)" if args.child_ctx_per_slot else "")
        + f"; {args.tokens} greedy tokens per stream (ignore_eos).",
        "",
        "| concurrent streams | llama-router child tok/s | llama-server tok/s | ratio |",
        "|---|---|---|---|",
    ]
    for streams in levels:
        ours_rate = results.get(f"gpu_streams_{streams}", OURS, "tokens_per_s") or 0.0
        theirs_rate = results.get(f"gpu_streams_{streams}", THEIRS, "tokens_per_s") or 1.0
        table.append(f"| {streams} | {ours_rate:.0f} | {theirs_rate:.0f} | "
                     f"{ours_rate / theirs_rate:.2f}x |")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    results.note(table[0])
    results.write_json(args.out / "gpu.json")
    (args.out / "gpu.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
