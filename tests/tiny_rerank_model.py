"""Tiny random-weight GGUFs for the reranking and infill routes, beside ``tiny_models.py``.

- A reranker: the smallest model llama.cpp pools with ``rank``. A 2-layer ``qwen3`` (a llama
  with per-head norms of queries and keys) whose GGUF says ``pooling_type = rank`` and has a
  classifier head ``cls.output`` with two labels, as llama.cpp's Qwen3 rerankers are converted:
  the score of a document is the softmax's first label, read at the last token.
- A BERT reranker (non-causal: a text must fit one physical batch), scored at its first
  token through the dense ``cls`` layer and ``cls.output``, as BGE and Jina rerankers are.
- A llama with fill-in-the-middle tokens, named by ``tokenizer.ggml.fim_*_token_id``.

Both use ``tiny_models.py``'s byte-level vocabulary, so text round-trips exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np

from tests.tiny_models import N_EMBD, N_FF, N_HEADS, N_LAYERS, byte_vocabulary

# Qwen3 rerankers' own template (llama.cpp's converter writes it as the "rerank" template).
RERANK_TEMPLATE = "<query>{query}</query><document>{document}</document>"
FIM_TOKENS = {
    "fim_pre": "<|fim_prefix|>",
    "fim_suf": "<|fim_suffix|>",
    "fim_mid": "<|fim_middle|>",
    "fim_rep": "<|repo_name|>",
    "fim_sep": "<|file_sep|>",
}
SEPARATOR_TEXT = "<sep>"


def write_tiny_reranker(
    path: Path, *, rerank_template: str | None = None, seed: int = 0, add_eos_sep: bool = False
) -> Path:
    """A working tiny reranker at ``path``. Without ``rerank_template``, llama.cpp's prompt is
    BOS query [EOS SEP] document [EOS], the bracketed tokens with ``add_eos_sep``."""

    def metadata(writer: gguf.GGUFWriter) -> None:
        writer.add_pooling_type(gguf.PoolingType.RANK)
        writer.add_classifier_output_labels(["yes", "no"])
        if rerank_template is not None:
            writer.add_chat_template([{"name": "rerank", "template": rerank_template}])
        if add_eos_sep:
            writer.add_add_eos_token(True)
            writer.add_add_sep_token(True)

    def head(weights: Callable[..., np.ndarray]) -> dict[str, np.ndarray]:
        return {"cls.output.weight": weights(2, N_EMBD)}

    return _write(
        path, arch="qwen3", seed=seed, metadata=metadata, extra_tensors=head, extra_tokens=()
    )


def write_tiny_bert_reranker(path: Path, *, seed: int = 0) -> Path:
    """A working tiny BERT reranker at ``path`` (its prompt: BOS query EOS SEP document EOS)."""
    rng = np.random.default_rng(seed)
    tokens, scores, types = byte_vocabulary()
    tokens.append(SEPARATOR_TEXT)
    scores.append(0.0)
    types.append(int(gguf.TokenType.CONTROL))
    n_vocab, n_positions = len(tokens), 512

    writer = gguf.GGUFWriter(str(path), "bert")
    writer.add_name("tiny-test-bert-reranker")
    writer.add_context_length(n_positions)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYERS)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEADS)
    writer.add_layer_norm_eps(1e-12)
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType.RANK)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_token_type_count(2)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_sep_token_id(n_vocab - 1)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(True)
    writer.add_add_sep_token(True)
    writer.add_add_space_prefix(False)

    def weights(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    def zeros(n: int) -> np.ndarray:
        return np.zeros(n, dtype=np.float32)

    writer.add_tensor("token_embd.weight", weights(n_vocab, N_EMBD))
    writer.add_tensor("token_types.weight", weights(2, N_EMBD))
    writer.add_tensor("position_embd.weight", weights(n_positions, N_EMBD))
    writer.add_tensor("token_embd_norm.weight", ones(N_EMBD))
    writer.add_tensor("token_embd_norm.bias", zeros(N_EMBD))
    writer.add_tensor("cls.weight", weights(N_EMBD, N_EMBD))
    writer.add_tensor("cls.bias", zeros(N_EMBD))
    writer.add_tensor("cls.output.weight", weights(1, N_EMBD))
    writer.add_tensor("cls.output.bias", zeros(1))
    for layer in range(N_LAYERS):
        block = f"blk.{layer}"
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"{block}.{name}.weight", weights(N_EMBD, N_EMBD))
            writer.add_tensor(f"{block}.{name}.bias", zeros(N_EMBD))
        writer.add_tensor(f"{block}.attn_output_norm.weight", ones(N_EMBD))
        writer.add_tensor(f"{block}.attn_output_norm.bias", zeros(N_EMBD))
        writer.add_tensor(f"{block}.ffn_up.weight", weights(N_FF, N_EMBD))
        writer.add_tensor(f"{block}.ffn_up.bias", zeros(N_FF))
        writer.add_tensor(f"{block}.ffn_down.weight", weights(N_EMBD, N_FF))
        writer.add_tensor(f"{block}.ffn_down.bias", zeros(N_EMBD))
        writer.add_tensor(f"{block}.layer_output_norm.weight", ones(N_EMBD))
        writer.add_tensor(f"{block}.layer_output_norm.bias", zeros(N_EMBD))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_tiny_fim_llama(path: Path, *, seed: int = 0, repo_level: bool = True) -> Path:
    """A tiny llama with FIM prefix, suffix and middle tokens; with ``repo_level``, also the
    repository and file-separator tokens of the repo-level pattern."""
    names = [name for name in FIM_TOKENS if repo_level or name not in ("fim_rep", "fim_sep")]
    first_id = len(byte_vocabulary()[0])

    def metadata(writer: gguf.GGUFWriter) -> None:
        for offset, name in enumerate(names):
            writer.add_uint32(f"tokenizer.ggml.{name}_token_id", first_id + offset)

    return _write(
        path,
        arch="llama",
        seed=seed,
        metadata=metadata,
        extra_tensors=lambda weights: {},
        extra_tokens=tuple(FIM_TOKENS[name] for name in names),
    )


def _write(
    path: Path,
    *,
    arch: str,
    seed: int,
    metadata: Callable[[gguf.GGUFWriter], None],
    extra_tensors: Callable[[Callable[..., np.ndarray]], dict[str, np.ndarray]],
    extra_tokens: tuple[str, ...],
) -> Path:
    rng = np.random.default_rng(seed)
    tokens, scores, types = byte_vocabulary()
    tokens += [*extra_tokens, SEPARATOR_TEXT]
    scores += [0.0] * (len(extra_tokens) + 1)
    types += [int(gguf.TokenType.CONTROL)] * (len(extra_tokens) + 1)
    n_vocab = len(tokens)
    head_dim = N_EMBD // N_HEADS

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(f"tiny-test-{arch}")
    writer.add_context_length(2048)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYERS)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEADS)
    writer.add_head_count_kv(N_HEADS)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_sep_token_id(n_vocab - 1)
    writer.add_add_bos_token(True)
    writer.add_add_space_prefix(False)
    metadata(writer)

    def weights(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    writer.add_tensor("token_embd.weight", weights(n_vocab, N_EMBD))
    writer.add_tensor("output_norm.weight", ones(N_EMBD))
    writer.add_tensor("output.weight", weights(n_vocab, N_EMBD))
    for name, tensor in extra_tensors(weights).items():
        writer.add_tensor(name, tensor)
    for layer in range(N_LAYERS):
        block = f"blk.{layer}"
        writer.add_tensor(f"{block}.attn_norm.weight", ones(N_EMBD))
        writer.add_tensor(f"{block}.attn_q.weight", weights(N_EMBD, N_EMBD))
        writer.add_tensor(f"{block}.attn_k.weight", weights(N_EMBD, N_EMBD))
        writer.add_tensor(f"{block}.attn_v.weight", weights(N_EMBD, N_EMBD))
        writer.add_tensor(f"{block}.attn_output.weight", weights(N_EMBD, N_EMBD))
        if arch == "qwen3":
            writer.add_tensor(f"{block}.attn_q_norm.weight", ones(head_dim))
            writer.add_tensor(f"{block}.attn_k_norm.weight", ones(head_dim))
        writer.add_tensor(f"{block}.ffn_norm.weight", ones(N_EMBD))
        writer.add_tensor(f"{block}.ffn_gate.weight", weights(N_FF, N_EMBD))
        writer.add_tensor(f"{block}.ffn_up.weight", weights(N_FF, N_EMBD))
        writer.add_tensor(f"{block}.ffn_down.weight", weights(N_EMBD, N_FF))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
