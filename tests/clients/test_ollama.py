"""The official `ollama` client, unchanged, against Corral's Ollama API (`/api/chat`,
`/api/generate`, `/api/tags`, `/api/embed`), translated to the instances' OpenAI endpoints."""
import ollama
import pytest


@pytest.fixture(scope="module")
def client(base_url, inference_key):
    return ollama.Client(host=base_url, headers={"Authorization": f"Bearer {inference_key}"}, timeout=120)


def test_chat_answers_as_the_assistant(client, chat_model):
    response = client.chat(
        model=chat_model,
        messages=[{"role": "user", "content": "Say hello"}],
        options={"num_predict": 8},
    )
    assert response.done
    assert response.message.role == "assistant"
    assert isinstance(response.message.content, str)
    assert (response.eval_count or 0) > 0


def test_streaming_chat_arrives_as_several_lines(client, chat_model):
    parts = list(
        client.chat(
            model=chat_model,
            messages=[{"role": "user", "content": "Count to ten"}],
            options={"num_predict": 12},
            stream=True,
        )
    )
    assert parts[-1].done
    assert sum(1 for p in parts if p.message.content) >= 2, parts


def test_generate_continues_the_prompt(client, chat_model):
    response = client.generate(model=chat_model, prompt="Once upon a time", options={"num_predict": 6})
    assert response.done
    assert isinstance(response.response, str)
    assert (response.eval_count or 0) > 0


def test_list_shows_every_instance(client, chat_model, embedding_model):
    names = {model.model.split(":")[0] for model in client.list().models}
    assert {chat_model, embedding_model} <= names


def test_embed_returns_one_vector_per_input(client, embedding_model):
    response = client.embed(model=embedding_model, input=["hello there", "a quiet lake"])
    assert len(response.embeddings) == 2
    assert len(response.embeddings[0]) == len(response.embeddings[1]) > 0


def test_unknown_model_is_an_error(client):
    with pytest.raises(ollama.ResponseError) as raised:
        client.chat(model="no-such-instance", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 404
