"""The official `openai` client, unchanged, against Corral's `/v1` routes."""
import math

import openai
import pytest


@pytest.fixture(scope="module")
def client(base_url, inference_key):
    # No retries: a failure must show up as itself, not as a slow pass.
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=inference_key, max_retries=0, timeout=120)


def test_chat_completion_answers_with_generated_tokens(client, chat_model):
    answer = client.chat.completions.create(
        model=chat_model,
        messages=[{"role": "user", "content": "Say hello"}],
        max_tokens=8,
    )
    choice = answer.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("length", "stop")
    assert answer.usage.completion_tokens > 0


def test_streaming_chat_arrives_in_several_chunks(client, chat_model):
    stream = client.chat.completions.create(
        model=chat_model,
        messages=[{"role": "user", "content": "Count to ten"}],
        max_tokens=12,
        stream=True,
    )
    pieces = [
        chunk.choices[0].delta.content
        for chunk in stream
        if chunk.choices and chunk.choices[0].delta.content
    ]
    assert len(pieces) >= 2, pieces


def test_text_completion_answers(client, chat_model):
    answer = client.completions.create(model=chat_model, prompt="Once upon a time", max_tokens=6)
    assert isinstance(answer.choices[0].text, str)
    assert answer.usage.completion_tokens > 0


def test_embeddings_come_from_the_embedding_instance(client, embedding_model):
    answer = client.embeddings.create(model=embedding_model, input=["hello there", "a quiet lake"])
    vectors = [item.embedding for item in sorted(answer.data, key=lambda d: d.index)]
    assert len(vectors) == 2
    assert len(vectors[0]) == len(vectors[1]) > 0
    assert vectors[0] != vectors[1]
    assert all(math.isfinite(x) for x in vectors[0])


def test_models_list_names_every_instance(client, chat_model, embedding_model):
    ids = {model.id for model in client.models.list()}
    assert {chat_model, embedding_model} <= ids


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(
            model="no-such-instance", messages=[{"role": "user", "content": "hi"}], max_tokens=1
        )
    assert "no-such-instance" in str(raised.value)


def test_wrong_key_is_rejected(base_url, chat_model):
    stranger = openai.OpenAI(base_url=f"{base_url}/v1", api_key="sk-wrong", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError):
        stranger.chat.completions.create(
            model=chat_model, messages=[{"role": "user", "content": "hi"}], max_tokens=1
        )


def test_chat_starts_a_stopped_on_demand_instance(client, management, stopped_on_demand_model):
    answer = client.chat.completions.create(
        model=stopped_on_demand_model,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
    )
    assert answer.usage.completion_tokens > 0
    assert management.instance(stopped_on_demand_model)["status"] == "running"
