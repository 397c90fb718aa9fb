"""The official `openai` and `ollama` clients, unchanged, against an `mlx_lm.server` instance
behind Corral: the instance's name works though the backend only knows the model's folder, and
streaming and token counts come through. (mlx_lm.server has no Anthropic endpoint.)"""
import ollama
import openai
import pytest


@pytest.fixture(scope="module")
def openai_client(base_url, inference_key):
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=inference_key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def ollama_client(base_url, inference_key):
    return ollama.Client(host=base_url, headers={"Authorization": f"Bearer {inference_key}"}, timeout=120)


def test_chat_completion_under_the_instance_name(openai_client, mlx_model):
    answer = openai_client.chat.completions.create(
        model=mlx_model,
        messages=[{"role": "user", "content": "Say hello"}],
        max_tokens=6,
    )
    assert answer.choices[0].message.role == "assistant"
    assert isinstance(answer.choices[0].message.content, str)
    assert answer.usage.completion_tokens > 0


def test_streaming_chat_ends_with_usage(openai_client, mlx_model):
    stream = openai_client.chat.completions.create(
        model=mlx_model,
        messages=[{"role": "user", "content": "Count to ten"}],
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 2, chunks
    usage = [c.usage for c in chunks if c.usage]
    assert usage and usage[-1].completion_tokens > 0, chunks


def test_text_completion(openai_client, mlx_model):
    answer = openai_client.completions.create(model=mlx_model, prompt="Once upon a", max_tokens=4)
    assert isinstance(answer.choices[0].text, str)


def test_the_instance_is_listed_under_its_name(openai_client, mlx_model):
    assert mlx_model in [model.id for model in openai_client.models.list()]


def test_ollama_chat_and_stream(ollama_client, mlx_model):
    response = ollama_client.chat(
        model=mlx_model,
        messages=[{"role": "user", "content": "Say hello"}],
        options={"num_predict": 6},
    )
    assert response.done and response.message.role == "assistant"
    assert (response.eval_count or 0) > 0
    parts = list(
        ollama_client.chat(
            model=mlx_model,
            messages=[{"role": "user", "content": "Count to ten"}],
            options={"num_predict": 8},
            stream=True,
        )
    )
    assert len(parts) >= 2 and parts[-1].done, parts
