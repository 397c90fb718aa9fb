"""The official `anthropic` client, unchanged, against Corral's `/v1/messages` (llama-server
serves the Messages API itself; Corral routes it by `model`)."""
import anthropic
import pytest


@pytest.fixture(scope="module")
def client(base_url, inference_key):
    # The client sends its key as `X-Api-Key`, which Corral's inference auth accepts.
    return anthropic.Anthropic(base_url=base_url, api_key=inference_key, max_retries=0, timeout=120)


def test_message_answers_with_text(client, chat_model):
    message = client.messages.create(
        model=chat_model,
        max_tokens=8,
        messages=[{"role": "user", "content": "Say hello"}],
    )
    assert message.role == "assistant"
    assert message.content and message.content[0].type == "text"
    assert isinstance(message.content[0].text, str)
    assert message.stop_reason in ("max_tokens", "end_turn")
    assert message.usage.output_tokens > 0


def test_streamed_message_arrives_as_several_text_deltas(client, chat_model):
    with client.messages.stream(
        model=chat_model,
        max_tokens=12,
        messages=[{"role": "user", "content": "Count to ten"}],
    ) as stream:
        deltas = [text for text in stream.text_stream if text]
        final = stream.get_final_message()
    assert len(deltas) >= 2, deltas
    assert final.content[0].text == "".join(deltas)
    assert final.usage.output_tokens > 0


def test_unknown_model_is_not_found(client):
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(
            model="no-such-instance", max_tokens=1, messages=[{"role": "user", "content": "hi"}]
        )
