"""``POST /v1/chat/completions`` in OpenAI's shapes, so OpenAI's clients and chat UIs talk to a fusion model.

The model has no chat template: the prompt is the messages' contents in order, concatenated, roles left out
(a role word would be text the model never saw in training). Content is a string or a list of ``text`` /
``image_url`` parts; an image is a ``data:image/...;base64`` URI, in an ``image_url`` part or as a Markdown
image in text (so a chat UI's history, which carries earlier generated images that way, goes back in as images).
OpenAI's knobs map onto ``GenerationConfig``: ``max_tokens`` / ``max_completion_tokens`` -> ``max_new_tokens``,
``n`` -> ``num_return_sequences``, ``stop`` -> ``stop_strings``, ``temperature``, ``top_p``, ``seed``; any other
``GenerationConfig`` field (``mode``, ``guidance_scale``, ...) comes as an extra body field (``extra_body=``).
Generated images come back in the content as Markdown images with PNG data URIs: ``![image](data:...)``.
"""

from __future__ import annotations

import re
import time

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response

from fusion.document import IMAGE_KIND, TEXT_KIND, Document, Image, Text
from fusion.images import to_data_uri
from fusion.inference.config import GenerationConfig
from fusion.serve.jobs import Event, Job
from fusion.serve.metrics import Metrics
from fusion.serve.requests import (
    CONFIG_FIELDS,
    ApiError,
    check_bool,
    check_seed,
    check_text,
    decode_image,
    invalid,
    make_config,
    parse_object,
    unknown,
)
from fusion.serve.streams import collect, read_body, sse, sse_response, submit, unfinished

ALIASES = {"max_tokens": "max_new_tokens", "max_completion_tokens": "max_new_tokens", "n": "num_return_sequences",
           "stop": "stop_strings"}
OPENAI_KEYS = ("model", "messages", "stream", "stream_options", "seed", "user", "temperature", "top_p", *ALIASES)
ROLES = ("system", "developer", "user", "assistant")
MARKDOWN_IMAGE = re.compile(r"!\[[^\]]*\]\((data:image/[^)\s]+)\)")
ENDPOINT = "/v1/chat/completions"


def router(scheduler, metrics: Metrics, *, model_name: str, max_image_pixels: int) -> APIRouter:
    api = APIRouter()

    @api.post(ENDPOINT)
    async def chat_completions(request: Request) -> Response:
        job, stream, usage_chunk = await run_in_threadpool(parse_chat, await read_body(request),
                                                           scheduler.fusion.generation_config, max_image_pixels)
        ticket = await submit(scheduler, job)
        events = metrics.watch(ticket, ENDPOINT)
        head = {"id": f"chatcmpl-{ticket.id}", "created": int(time.time()), "model": model_name}
        n = job.config.num_return_sequences
        if stream:
            return sse_response(chunks(events, head, n, usage_chunk))
        result = await collect(request, events, n)
        if (failed := unfinished(result)) is not None:
            return failed
        rows, last = result
        choices = [{"index": i, "message": {"role": "assistant", "content": markdown(doc)},
                    "finish_reason": last.finish_reasons[i], "logprobs": None} for i, doc in enumerate(rows.documents)]
        return JSONResponse({**head, "object": "chat.completion", "choices": choices, "usage": usage(last)})

    return api


def parse_chat(raw: bytes, defaults: GenerationConfig, max_pixels: int) -> tuple[Job, bool, bool]:
    """A chat request -> (the job, stream, whether a final usage chunk is wanted)."""
    body = parse_object(raw)
    unknown(body, OPENAI_KEYS + CONFIG_FIELDS)
    body = {k: v for k, v in body.items() if v is not None or k in CONFIG_FIELDS}  # OpenAI's null: not given
    fields = {k: v for k, v in body.items() if k in CONFIG_FIELDS}
    given_as = {k: k for k in fields}  # field -> the name the client used
    for alias, name in ALIASES.items():
        if alias in body:
            if name in given_as:
                raise invalid(alias, f"give {alias} or {given_as[name]}, not both")
            fields[name], given_as[name] = body[alias], alias
    if "model" in body and not isinstance(body["model"], str):
        raise invalid("model", "model must be a string", "wrong_type")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not set(options) <= {"include_usage"}:
        raise invalid("stream_options", 'stream_options must be {"include_usage": bool}', "wrong_type")
    try:
        config = make_config(defaults, fields)
    except ApiError as e:  # name the field as the client did
        alias = given_as.get(e.param, e.param)
        raise invalid(alias, e.message if alias == e.param else f"{alias}: {e.message}", e.type) from None
    job = Job(prompt=prompt(body.get("messages"), max_pixels), config=config, seed=check_seed(body.get("seed")))
    return job, check_bool(body, "stream"), check_bool(options, "include_usage")


def prompt(messages, max_pixels: int) -> Document:
    """The messages' contents, in order, as one Document (adjacent text joined)."""
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", "messages must be a non-empty list of {role, content}",
                      "wrong_type" if messages is not None else "missing_field")
    doc = Document()
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES or \
                not set(message) <= {"role", "content", "name"}:
            raise invalid(where, f"{where} must be {{role: one of {list(ROLES)}, content}}", "wrong_type")
        content = message.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        if not isinstance(parts, list):
            raise invalid(f"{where}.content", f"{where}.content must be a string or a list of parts", "wrong_type")
        for j, part in enumerate(parts):
            for segment in segments(part, f"{where}.content[{j}]", max_pixels):
                append(doc, segment)
    return doc


def segments(part, where: str, max_pixels: int) -> list[Text | Image]:
    """A content part -> segments: a text part (its Markdown data-URI images as images), or an image_url part."""
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text" and isinstance(part.get("text"), str) and set(part) == {"type", "text"}:
        pieces = MARKDOWN_IMAGE.split(check_text(part["text"], where))  # text, uri, text, uri, ..., text
        return [Image(decode_image(p, where, max_pixels)) if k % 2 else Text(p) for k, p in enumerate(pieces)
                if k % 2 or p]
    if kind == "image_url" and set(part) == {"type", "image_url"}:
        url = part["image_url"].get("url") if isinstance(part["image_url"], dict) else None
        if isinstance(url, str):
            return [Image(decode_image(url, where, max_pixels))]
    raise invalid(where, f'{where} must be {{"type": "text", "text": str}} or {{"type": "image_url", "image_url": '
                         f'{{"url": "data:image/...;base64,..."}}}}', "wrong_type")


def append(doc: Document, segment: Text | Image) -> None:
    if isinstance(segment, Text) and doc.segments and isinstance(doc.segments[-1], Text):
        doc.segments[-1] = Text(doc.segments[-1].text + segment.text)
    else:
        doc.segments.append(segment)


def piece(event: Event) -> str:
    """A text piece as it is; an image as a Markdown image with a PNG data URI."""
    return event.text if event.kind == TEXT_KIND else f"![image]({to_data_uri(event.image)})"


def markdown(doc: Document) -> str:
    return "".join(s.text if isinstance(s, Text) else f"![image]({to_data_uri(s.image)})" for s in doc.segments)


def usage(event: Event) -> dict | None:
    u = event.usage
    return None if u is None else {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.generated_tokens,
                                   "total_tokens": u.prompt_tokens + u.generated_tokens}


async def chunks(events, head: dict, n: int, usage_chunk: bool):
    """``chat.completion.chunk`` events: each choice's role, its content deltas, its finish reason; the usage
    chunk if asked for; then ``[DONE]``. A failed job sends ``{"error": ...}`` (what OpenAI's clients raise)."""
    head = {**head, "object": "chat.completion.chunk"}

    def chunk(index: int, delta: dict, finish_reason: str | None = None) -> str:
        return sse({**head, "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason,
                                         "logprobs": None}]})

    for i in range(n):
        yield chunk(i, {"role": "assistant", "content": ""})
    async for event in events:
        if event.kind in (TEXT_KIND, IMAGE_KIND):
            yield chunk(event.row, {"content": piece(event)})
        elif event.kind == "done":
            for i, reason in enumerate(event.finish_reasons or []):
                yield chunk(i, {}, reason)
            if usage_chunk:
                yield sse({**head, "choices": [], "usage": usage(event)})
            yield sse("[DONE]")
        else:
            yield sse(ApiError(500, event.message, type="server_error").body())
