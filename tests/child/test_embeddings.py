"""/v1/embeddings on a child started with --embeddings, through the openai client."""

from __future__ import annotations

import math
from pathlib import Path

import openai
import pytest

from tests.processes import running_child
from tests.tiny_models import N_EMBD


def test_embeddings_are_normalized_vectors_one_per_input(tiny_model: Path) -> None:
    with running_child(tiny_model, "--embeddings", "--alias", "tiny") as child:
        client = openai.OpenAI(base_url=child.openai_base_url, api_key="x", max_retries=0)
        # The openai client asks for base64 by default and decodes it: both forms are used.
        result = client.embeddings.create(model="tiny", input=["alpha", "beta", "alpha"])
        floats = client.embeddings.create(model="tiny", input="alpha", encoding_format="float")
    vectors = [item.embedding for item in result.data]
    assert [item.index for item in result.data] == [0, 1, 2]
    assert all(len(vector) == N_EMBD for vector in vectors)
    assert all(math.isclose(math.hypot(*vector), 1.0, rel_tol=1e-4) for vector in vectors)
    assert vectors[0] != vectors[1]
    assert vectors[0] == pytest.approx(vectors[2], abs=1e-6)
    # base64 carries float32; the float form, the full value
    assert floats.data[0].embedding == pytest.approx(vectors[0], abs=1e-6)
    assert result.usage.prompt_tokens == 2 * len("alpha") + len("beta") + 3  # bytes + BOS each
