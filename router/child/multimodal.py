"""Image and audio parts of chat messages, which the built-in child does not feed to a model.

A model folder with an ``mmproj*.gguf`` reaches the child as ``--mmproj PATH``, but the child
loads no projector yet: feeding an image means evaluating its embeddings inside a slot's
sequence, between the prompt's tokens, which the decode loop does not do. So every media part
is refused here with a 400 that names what is missing (a client must not retry it, as it
would a 5xx), whichever API (chat, Responses, Anthropic) carried it.
"""

from __future__ import annotations

from typing import Any

from router.errors import NotSupported

# The content part types that carry media, in OpenAI's chat, Responses and Anthropic's APIs.
MEDIA_PART_TYPES = frozenset({"image_url", "input_image", "image", "input_audio", "audio"})


def is_media_part(part: Any) -> bool:
    return isinstance(part, dict) and part.get("type") in MEDIA_PART_TYPES


def media_refused(where: str, part: dict[str, Any]) -> NotSupported:
    """The 400 for the media ``part`` found at ``where`` (``messages[0].content[1]``)."""
    kind = part.get("type")
    what = "audio" if "audio" in str(kind) else "an image"
    return NotSupported(
        f"'{where}' is {what} (type {kind!r}), but this model reads text only: it has no "
        "multimodal projector (mmproj) loaded, and llama-router's built-in child loads none "
        "yet. Send text parts, or serve this model with llama-server and its --mmproj "
        "(a conf.d `command`)",
        param=where,
    )
