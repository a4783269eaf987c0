"""The GGUF header reader: the same scalars as the gguf package's reader, arrays skipped."""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import pytest

from router.models.gguf_header import scalar_metadata
from tests.conftest import gemma_path
from tests.tiny_models import write_tiny_llama


def test_scalars_are_those_the_gguf_package_reads(tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "m.gguf", context_length=1024)
    reader = gguf.GGUFReader(path)
    expected = {
        name: field.contents()
        for name, field in reader.fields.items()
        if not name.startswith("GGUF.") and field.types[0] != gguf.GGUFValueType.ARRAY
    }
    metadata = scalar_metadata(path)
    assert dict(metadata) == pytest.approx(expected)
    assert metadata["llama.context_length"] == 1024
    assert metadata["tokenizer.chat_template"].startswith("{% for message")  # type: ignore[union-attr]
    assert "tokenizer.ggml.tokens" not in metadata  # an array


def test_gemma_header_reads_right() -> None:
    metadata = scalar_metadata(gemma_path())
    assert metadata["general.architecture"] == "gemma3"
    assert metadata["gemma3.block_count"] == 18


def test_a_big_endian_file_reads_the_same(tmp_path: Path) -> None:
    path = tmp_path / "big.gguf"
    writer = gguf.GGUFWriter(path, "llama", endianess=gguf.GGUFEndian.BIG)
    writer.add_context_length(4096)
    writer.add_token_list(["a", "bc"])
    writer.add_layer_norm_rms_eps(0.5)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    assert dict(scalar_metadata(path)) == {
        "general.architecture": "llama",
        "llama.context_length": 4096,
        "llama.attention.layer_norm_rms_epsilon": 0.5,
    }


@pytest.mark.parametrize("keep", [0, 3, 30, 100])
def test_a_cut_file_is_a_value_error(tmp_path: Path, keep: int) -> None:
    whole = write_tiny_llama(tmp_path / "whole.gguf").read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(whole[:keep])
    with pytest.raises(ValueError, match="no readable GGUF header"):
        scalar_metadata(path)


def test_not_a_gguf_is_a_value_error(tmp_path: Path) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(ValueError, match="not a GGUF file"):
        scalar_metadata(path)


def test_a_changed_file_is_read_again(tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "m.gguf", context_length=1024)
    assert scalar_metadata(path)["llama.context_length"] == 1024
    stat = path.stat()
    write_tiny_llama(path, context_length=2048)  # the same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert scalar_metadata(path)["llama.context_length"] == 2048
