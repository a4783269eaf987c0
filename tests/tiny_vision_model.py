"""A tiny random-weight LLaVA-style projector (mmproj) GGUF, for tests that feed a real image.

llama.cpp's clip loader takes it as a ``mlp`` projector (LLaVA 1.5): a 28-pixel image cut into
14-pixel patches, so each image is ``IMAGE_TOKENS`` (4) embeddings wide, projected to the
``n_embd`` of the tiny llama in ``tests/tiny_models.py``. It runs in milliseconds on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from tests.tiny_models import N_EMBD

IMAGE_SIZE = 28
PATCH_SIZE = 14
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2
VISION_EMBD = 32
VISION_FF = 64
VISION_LAYERS = 2
VISION_HEADS = 4


def write_tiny_mmproj(path: Path, *, text_n_embd: int = N_EMBD, seed: int = 0) -> Path:
    """Write a projector that llama.cpp's mtmd loads for a text model of width
    ``text_n_embd`` and return ``path``."""
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "clip")
    writer.add_name("tiny-test-mmproj")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_string("clip.projector_type", "mlp")
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_bool("clip.use_gelu", True)
    writer.add_uint32("clip.vision.image_size", IMAGE_SIZE)
    writer.add_uint32("clip.vision.patch_size", PATCH_SIZE)
    writer.add_uint32("clip.vision.embedding_length", VISION_EMBD)
    writer.add_uint32("clip.vision.feed_forward_length", VISION_FF)
    writer.add_uint32("clip.vision.block_count", VISION_LAYERS)
    writer.add_uint32("clip.vision.attention.head_count", VISION_HEADS)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    writer.add_uint32("clip.vision.projection_dim", text_n_embd)
    writer.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    writer.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])

    def weights(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    def zeros(n: int) -> np.ndarray:
        return np.zeros(n, dtype=np.float32)

    n_patches = IMAGE_TOKENS
    # numpy shapes are ggml's reversed: conv kernel ne = [patch, patch, 3, embd]
    writer.add_tensor("v.patch_embd.weight", weights(VISION_EMBD, 3, PATCH_SIZE, PATCH_SIZE))
    writer.add_tensor("v.patch_embd.bias", zeros(VISION_EMBD))
    writer.add_tensor("v.position_embd.weight", weights(n_patches, VISION_EMBD))
    for layer in range(VISION_LAYERS):
        block = f"v.blk.{layer}"
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            writer.add_tensor(f"{block}.{name}.weight", weights(VISION_EMBD, VISION_EMBD))
            writer.add_tensor(f"{block}.{name}.bias", zeros(VISION_EMBD))
        writer.add_tensor(f"{block}.ln1.weight", ones(VISION_EMBD))
        writer.add_tensor(f"{block}.ln1.bias", zeros(VISION_EMBD))
        writer.add_tensor(f"{block}.ln2.weight", ones(VISION_EMBD))
        writer.add_tensor(f"{block}.ln2.bias", zeros(VISION_EMBD))
        writer.add_tensor(f"{block}.ffn_up.weight", weights(VISION_FF, VISION_EMBD))
        writer.add_tensor(f"{block}.ffn_up.bias", zeros(VISION_FF))
        writer.add_tensor(f"{block}.ffn_down.weight", weights(VISION_EMBD, VISION_FF))
        writer.add_tensor(f"{block}.ffn_down.bias", zeros(VISION_EMBD))
    writer.add_tensor("mm.0.weight", weights(text_n_embd, VISION_EMBD))
    writer.add_tensor("mm.0.bias", zeros(text_n_embd))
    writer.add_tensor("mm.2.weight", weights(text_n_embd, text_n_embd))
    writer.add_tensor("mm.2.bias", zeros(text_n_embd))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tiny_png(width: int = 8, height: int = 8) -> bytes:
    """A valid RGB PNG of a colour gradient, written with zlib alone (no imaging library)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in (x * 30 % 256, y * 30 % 256, 128))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
