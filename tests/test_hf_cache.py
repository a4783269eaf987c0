"""llama.cpp's model cache: found where llama.cpp finds it, read as it reads it (ids
``ORG/REPO:TAG``, splits, mmproj), removed file by file, and served without ``--models-dir``."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from router.models.catalog import ModelFolders
from router.models.hf_cache import (
    cache_dir,
    find_best_model,
    remove_cached,
    scan_cache,
    split_info,
    split_repo_tag,
)
from tests.fake_hub import COMMIT, write_cached_model
from tests.processes import running_router


def test_the_cache_folder_is_found_as_llama_cpp_finds_it() -> None:
    home = Path.home()
    assert cache_dir({"LLAMA_CACHE": "/l", "HF_HUB_CACHE": "/h"}) == Path("/l")
    assert cache_dir({"HF_HUB_CACHE": "/h", "HF_HOME": "/home"}) == Path("/h")
    assert cache_dir({"HUGGINGFACE_HUB_CACHE": "/old"}) == Path("/old")
    assert cache_dir({"HF_HOME": "/hf"}) == Path("/hf/hub")
    assert cache_dir({"XDG_CACHE_HOME": "/x"}) == Path("/x/huggingface/hub")
    assert cache_dir({}) == home / ".cache" / "huggingface" / "hub"


def test_a_file_name_says_its_tag_and_split() -> None:
    assert split_info("Model-Q4_K_M.gguf") is not None
    assert split_info("Model-q4_k_m.gguf").tag == "Q4_K_M"  # type: ignore[union-attr]
    info = split_info("sub/Big-Q8_0-00002-of-00003.gguf")
    assert info is not None and (info.tag, info.index, info.count) == ("Q8_0", 2, 3)
    assert split_info("README.md") is None


def test_a_repository_file_is_chosen_as_llama_cpp_chooses() -> None:
    files = ["m-Q8_0.gguf", "m-Q4_K_M.gguf", "mmproj-m-Q4_K_M.gguf", "README.md"]
    assert find_best_model(files, "") == "m-Q4_K_M.gguf"  # llama.cpp's default tag
    assert find_best_model(files, "q8_0") == "m-Q8_0.gguf"  # case-insensitive
    assert find_best_model(files, "Q5_K") is None
    assert find_best_model(["m-F16.gguf"], "") == "m-F16.gguf"  # no default tag: any model
    splits = ["b-Q4_K_M-00002-of-00002.gguf", "b-Q4_K_M-00001-of-00002.gguf"]
    assert find_best_model(splits, "Q4_K_M") == "b-Q4_K_M-00001-of-00002.gguf"


def test_a_repository_name_must_be_org_slash_repo() -> None:
    assert split_repo_tag("org/repo:q4_k_m") == ("org/repo", "Q4_K_M")
    assert split_repo_tag("org/repo") == ("org/repo", "")
    for bad in ("repo", "org/repo/x", "../etc:Q4", "org//repo", "org/re po"):
        with pytest.raises(ValueError, match="ORG/REPO"):
            split_repo_tag(bad)


def test_the_cache_lists_each_tag_with_its_splits_and_mmproj(tmp_path: Path) -> None:
    write_cached_model(
        tmp_path,
        "org/vision",
        {"v-Q4_K_M.gguf": b"a", "v-Q8_0.gguf": b"b", "mmproj-v-F16.gguf": b"p"},
    )
    write_cached_model(
        tmp_path,
        "org/big",
        {"sub/big-Q4_K_M-00001-of-00002.gguf": b"1", "sub/big-Q4_K_M-00002-of-00002.gguf": b"2"},
    )
    # A split set whose second file has not arrived yet is not a model yet.
    write_cached_model(tmp_path, "org/half", {"h-Q4_K_M-00001-of-00002.gguf": b"1"})
    (tmp_path / "models--broken").mkdir()  # not ORG--REPO: ignored
    specs = scan_cache(tmp_path)
    assert sorted(specs) == ["org/big:Q4_K_M", "org/vision:Q4_K_M", "org/vision:Q8_0"]
    vision = specs["org/vision:Q4_K_M"]
    snapshot = tmp_path / "models--org--vision" / "snapshots" / COMMIT
    assert vision.path == snapshot / "v-Q4_K_M.gguf" and vision.source == "cache"
    assert vision.mmproj == snapshot / "mmproj-v-F16.gguf"
    assert vision.path.read_bytes() == b"a"
    assert specs["org/big:Q4_K_M"].path.name == "big-Q4_K_M-00001-of-00002.gguf"  # type: ignore[union-attr]


def test_removing_a_tag_keeps_the_blobs_other_tags_use(tmp_path: Path) -> None:
    snapshot = write_cached_model(
        tmp_path, "org/m", {"m-Q4_K_M.gguf": b"four", "m-Q8_0.gguf": b"eight"}
    )
    blobs = tmp_path / "models--org--m" / "blobs"
    assert remove_cached(tmp_path, "org/m:q4_k_m")
    assert not (snapshot / "m-Q4_K_M.gguf").exists()
    assert [b.read_bytes() for b in blobs.iterdir()] == [b"eight"]
    assert sorted(scan_cache(tmp_path)) == ["org/m:Q8_0"]
    assert not remove_cached(tmp_path, "org/m:Q4_K_M")  # nothing left of it
    assert remove_cached(tmp_path, "org/m:Q8_0")
    assert not (tmp_path / "models--org--m").exists()  # its last model: the folder goes


def test_the_cache_is_read_only_when_served(tmp_path: Path, tiny_model: Path) -> None:
    write_cached_model(tmp_path / "cache", "org/tiny", {"tiny-Q4_K_M.gguf": tiny_model})
    served = ModelFolders((), tmp_path / "cache", is_cache_served=True)
    assert list(served.scan()) == ["org/tiny:Q4_K_M"]
    assert served.describe() == f"{tmp_path / 'cache'} (cache)"
    folders = ModelFolders((tiny_model.parent,), tmp_path / "cache", is_cache_served=False)
    assert "org/tiny:Q4_K_M" not in folders.scan()


def test_without_models_dir_the_cache_is_served(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    write_cached_model(cache, "org/tiny", {"tiny-Q4_K_M.gguf": tiny_model})
    monkeypatch.setenv("LLAMA_CACHE", str(cache))
    with running_router(None, cwd=tmp_path) as router:
        assert f"models: scanned {cache} (cache)" in router.stderr_text()
        data = httpx.get(f"{router.base_url}/models", timeout=10).json()["data"]
        assert [(m["id"], m["source"]) for m in data] == [("org/tiny:Q4_K_M", "cache")]
        client = openai.OpenAI(base_url=router.openai_base_url, api_key="none", max_retries=0)
        answer = client.completions.create(model="org/tiny:Q4_K_M", prompt="hi", max_tokens=2)
        assert answer.model == "org/tiny:Q4_K_M" and answer.choices[0].text is not None
