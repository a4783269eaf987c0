"""Image parts: a folder's ``mmproj*.gguf`` reaches the child as ``--mmproj``; the child loads
no projector, so an image part is a 400 that names the missing projector, which the openai
client does not retry (it would a 5xx), whether the model's folder has a projector or not."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from router.child.options import parse_child_arguments
from router.processes.own_children import own_child_argv
from router.spec import ModelSpec
from tests.processes import running_router
from tests.tiny_models import write_tiny_llama

PIXEL = base64.b64encode(b"\x89PNG\r\n\x1a\n not really a png").decode()


def test_a_folders_projector_is_passed_to_the_child(tmp_path: Path) -> None:
    spec = ModelSpec(id="vision", path=tmp_path / "m.gguf", mmproj=tmp_path / "mmproj-F16.gguf")
    argv = own_child_argv(spec, tmp_path / "s.sock", {}, [])
    at = argv.index("--mmproj")
    assert argv[at + 1] == str(tmp_path / "mmproj-F16.gguf")
    engine, _ = parse_child_arguments(argv[argv.index("child") + 1 :])
    assert engine.mmproj == tmp_path / "mmproj-F16.gguf"
    plain = own_child_argv(ModelSpec(id="plain", path=tmp_path / "m.gguf"), tmp_path / "s", {}, [])
    assert "--mmproj" not in plain


@pytest.mark.parametrize("model", ["vision", "plain"])
@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        {"type": "input_audio", "input_audio": {"data": PIXEL, "format": "wav"}},
    ],
)
def test_an_image_part_is_a_400_naming_the_missing_projector(
    models: Path, model: str, part: dict[str, object], router_url: str
) -> None:
    client = openai.OpenAI(base_url=f"{router_url}/v1", api_key="x", max_retries=2)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": [{"type": "text", "text": "what?"}, part]}],
            max_tokens=2,
        )
    assert caught.value.status_code == 400
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "not_supported_error"
    assert "mmproj" in body["message"] and "messages[0].content[1]" in body["message"]
    # The model serves text all the same (its child started with --mmproj, for "vision").
    answer = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert answer.choices[0].message.content is not None


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder: ``vision/`` (a model and a stand-in projector file) and ``plain``."""
    folder = tmp_path_factory.mktemp("models")
    (folder / "vision").mkdir()
    write_tiny_llama(folder / "vision" / "model.gguf")
    (folder / "vision" / "mmproj-F16.gguf").write_bytes(b"GGUF stand-in: never loaded")
    write_tiny_llama(folder / "plain.gguf", seed=1)
    return folder


@pytest.fixture(scope="module")
def router_url(models: Path) -> Iterator[str]:
    with running_router(models) as router:
        yield router.base_url
