"""Model discovery in --models-dir, laid out as llama.cpp lays it out."""

from __future__ import annotations

from pathlib import Path

from router.models.catalog import scan_models_dirs


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"GGUF")
    return path


def test_layouts(tmp_path: Path) -> None:
    touch(tmp_path / "single.gguf")
    touch(tmp_path / "notes.txt")
    touch(tmp_path / "vision" / "vision-Q8_0.gguf")
    touch(tmp_path / "vision" / "mmproj-F16.gguf")
    for n in (1, 2, 3):
        touch(tmp_path / "big" / f"big-0000{n}-of-00003.gguf")
    touch(tmp_path / "confusing" / "a.gguf")
    touch(tmp_path / "confusing" / "b.gguf")
    (tmp_path / "empty").mkdir()

    specs = scan_models_dirs([tmp_path])

    assert sorted(specs) == ["big", "single", "vision"]
    assert specs["single"].path == (tmp_path / "single.gguf").resolve()
    assert specs["vision"].mmproj == (tmp_path / "vision" / "mmproj-F16.gguf").resolve()
    assert specs["big"].path.name == "big-00001-of-00003.gguf"


def test_first_folder_wins_on_a_repeated_name(tmp_path: Path) -> None:
    first = touch(tmp_path / "one" / "m.gguf")
    touch(tmp_path / "two" / "m.gguf")
    specs = scan_models_dirs([tmp_path / "one", tmp_path / "two", tmp_path / "missing"])
    assert specs["m"].path == first.resolve()
