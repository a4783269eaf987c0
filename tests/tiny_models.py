"""Tiny random-weight GGUF models, written in milliseconds, for tests that need a real model.

A 64-wide, 2-layer llama with a byte-level SentencePiece vocabulary (<unk>, <s>, </s>, the
SentencePiece space and the 256 byte tokens): llama.cpp loads and runs it for real, in well
under a second.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import gguf
import numpy as np

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

N_EMBD = 64
N_LAYERS = 2
N_HEADS = 4
N_FF = 128


def byte_vocabulary() -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>", "\u2581"] + [f"<0x{b:02X}>" for b in range(256)]
    scores = [0.0] * len(tokens)
    types = [
        gguf.TokenType.UNKNOWN,
        gguf.TokenType.CONTROL,
        gguf.TokenType.CONTROL,
        gguf.TokenType.NORMAL,  # the SentencePiece space, so text round-trips exactly
    ] + [gguf.TokenType.BYTE] * 256
    return tokens, scores, [int(t) for t in types]


def write_tiny_llama(
    path: Path,
    *,
    chat_template: str | None = CHATML_TEMPLATE,
    context_length: int = 2048,
    seed: int = 0,
    n_embd: int = N_EMBD,
    n_ff: int = N_FF,
    n_layers: int = N_LAYERS,
    n_heads: int = N_HEADS,
    special_tokens: Sequence[str] = (),
) -> Path:
    """Write a working tiny llama GGUF to ``path`` and return it (wider if asked, with
    ``special_tokens`` added as user-defined tokens, which a prompt's text can name)."""
    rng = np.random.default_rng(seed)
    tokens, scores, types = byte_vocabulary()
    tokens += special_tokens
    scores += [0.0] * len(special_tokens)
    types += [int(gguf.TokenType.USER_DEFINED)] * len(special_tokens)
    n_vocab = len(tokens)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-test-llama")
    writer.add_context_length(context_length)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_heads)
    writer.add_head_count_kv(n_heads)
    writer.add_rope_dimension_count(n_embd // n_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
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
    if chat_template is not None:
        writer.add_chat_template(chat_template)

    def weights(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    writer.add_tensor("token_embd.weight", weights(n_vocab, n_embd))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    writer.add_tensor("output.weight", weights(n_vocab, n_embd))
    for layer in range(n_layers):
        block = f"blk.{layer}"
        writer.add_tensor(f"{block}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"{block}.attn_q.weight", weights(n_embd, n_embd))
        writer.add_tensor(f"{block}.attn_k.weight", weights(n_embd, n_embd))
        writer.add_tensor(f"{block}.attn_v.weight", weights(n_embd, n_embd))
        writer.add_tensor(f"{block}.attn_output.weight", weights(n_embd, n_embd))
        writer.add_tensor(f"{block}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"{block}.ffn_gate.weight", weights(n_ff, n_embd))
        writer.add_tensor(f"{block}.ffn_up.weight", weights(n_ff, n_embd))
        writer.add_tensor(f"{block}.ffn_down.weight", weights(n_embd, n_ff))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_truncated_gguf(path: Path, source: Path) -> Path:
    """A copy of ``source`` cut in half: a valid header whose tensors run past the end."""
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path
