"""/v1/chat/completions through the official openai client: the same tokens as ``Fusion.generate`` on the
concatenated messages, streamed or not; images out as Markdown PNG data URIs, images in as image_url parts."""

import re

import openai
import pytest

from fusion.document import Document
from fusion.inference.generate import Generation

from .conftest import PROMPT, from_uri, picture, png_uri

MARKDOWN_PNG = re.compile(r"!\[image\]\((data:image/png;base64,[^)]+)\)")


@pytest.fixture(scope="module")
def client(live):
    with openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def user(*content) -> list[dict]:
    """One user message: a string, or content parts."""
    return [{"role": "user", "content": content[0] if content and isinstance(content[0], str) else list(content)}]


def joined(chunks) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_text_equals_fusion_generate_streamed_or_not(client, reference):
    record = Generation()
    expected = reference.generate(PROMPT, mode="text", max_new_tokens=16, temperature=0.7, seed=2, record=record)
    kw = dict(model="tiny", max_tokens=16, temperature=0.7, seed=2, extra_body={"mode": "text"})
    # no chat template: the messages' contents are concatenated, roles left out
    messages = [{"role": "system", "content": "a large "}, {"role": "user", "content": "red circle:"}]
    out = client.chat.completions.create(messages=messages, **kw)
    assert out.object == "chat.completion" and out.model == "tiny" and len(out.choices) == 1
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == "".join(expected.texts)
    assert out.choices[0].finish_reason == ("stop" if len(record.ids[0]) < 16 else "length")
    prompt_tokens = len(reference.tokenizer.encode(Document.of(PROMPT), bos=True, eos=False))
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (
        prompt_tokens, len(record.ids[0]), prompt_tokens + len(record.ids[0]))

    chunks = list(client.chat.completions.create(messages=messages, stream=True,
                                                 stream_options={"include_usage": True}, **kw))
    assert {c.object for c in chunks} == {"chat.completion.chunk"} and chunks[0].choices[0].delta.role == "assistant"
    assert joined(chunks) == out.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == out.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == out.usage.completion_tokens


def test_image_mode_answers_a_markdown_png(client, reference):
    expected = reference.generate(PROMPT, mode="image", seed=4)
    kw = dict(model="tiny", messages=user(PROMPT), seed=4, extra_body={"mode": "image"})
    content = client.chat.completions.create(**kw).choices[0].message.content
    (uri,) = MARKDOWN_PNG.findall(content)
    image = from_uri(uri)
    assert image.size == (32, 32) and image.tobytes() == expected.images[0].tobytes()
    assert joined(client.chat.completions.create(stream=True, **kw)) == content


def test_image_url_parts_and_n_samples(client, reference):
    pic = picture(1)
    docs = reference.generate(Document.of(pic, "a"), mode="text", max_new_tokens=6, num_return_sequences=2, seed=1)
    out = client.chat.completions.create(
        model="tiny", n=2, max_tokens=6, seed=1, extra_body={"mode": "text"},
        messages=user({"type": "image_url", "image_url": {"url": png_uri(pic)}}, {"type": "text", "text": "a"}))
    assert [c.index for c in out.choices] == [0, 1]
    assert [c.message.content for c in out.choices] == ["".join(d.texts) for d in docs]


def test_a_markdown_image_in_the_history_goes_back_in_as_an_image(client, reference):
    pic = picture(2)
    docs = reference.generate(Document.of("a", pic, "b"), mode="text", max_new_tokens=6, seed=3)
    out = client.chat.completions.create(
        model="tiny", max_tokens=6, seed=3, extra_body={"mode": "text"},
        messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": f"![image]({png_uri(pic)})"},
                  {"role": "user", "content": "b"}])
    assert out.choices[0].message.content == "".join(docs.texts)


def test_stop_maps_to_stop_strings(client, reference):
    docs = reference.generate(PROMPT, mode="text", max_new_tokens=24, seed=6)
    text = "".join(docs.texts)
    stop = text[3:5] if len(text) > 5 else "e"
    expected = reference.generate(PROMPT, mode="text", max_new_tokens=24, seed=6, stop_strings=[stop])
    out = client.chat.completions.create(model="tiny", messages=user(PROMPT), max_tokens=24, seed=6, stop=stop,
                                         extra_body={"mode": "text"})
    assert out.choices[0].message.content == "".join(expected.texts)


@pytest.mark.parametrize(("kw", "param"), [
    (dict(temperature=-1), "temperature"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(extra_body={"mode": "audio"}), "mode"),
    (dict(extra_body={"logit_bias": {}}), "logit_bias"),
    (dict(messages=user({"type": "image_url", "image_url": {"url": "file:///etc/passwd"}})),
     "messages[0].content[0]"),
    (dict(messages=user({"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/x.png"}})),
     "messages[0].content[0]"),
    (dict(messages=[{"role": "tool", "content": "a"}]), "messages[0]"),
    (dict(max_tokens=2, extra_body={"max_new_tokens": 2}), "max_tokens"),
])
def test_bad_requests_are_openai_errors(client, kw, param):
    kw = {"model": "tiny", "messages": user(PROMPT), **kw}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**kw)
    assert e.value.param == param and e.value.status_code == 400
    assert client.chat.completions.create(model="tiny", messages=user(PROMPT), max_tokens=2).choices
