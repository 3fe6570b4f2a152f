"""Request bodies -> ``Job``s, checked field by field, for both APIs (``openai_compat.py`` reuses the checks here).

A bad body is an ``ApiError`` naming the field (its ``param``), which the app answers as
``{"error": {"message", "type", "param"}}``. Images come only inline, as ``data:image/<format>;base64,...``:
the server never opens a path or a URL for a client, and it reads an image's size from its header before it
decodes any pixel. Prompts are built here, not by ``Document.from_json`` (which opens paths).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import typing
from dataclasses import dataclass, fields

from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from fusion.document import IMAGE_KIND, TEXT_KIND, Document, Image, Text
from fusion.images import ImageError, load_image
from fusion.inference.config import HF_HINTS, GenerationConfig
from fusion.serve.jobs import Job

CONFIG_FIELDS = tuple(f.name for f in fields(GenerationConfig))
_HINTS = typing.get_type_hints(GenerationConfig)
GENERATE_KEYS = ("prompt", "seed", "stream", "return_ids", *CONFIG_FIELDS)
# The formats a prompt image may have; PIL is told to try no other decoder (EPS, for one, runs Ghostscript).
IMAGE_FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP", "gif": "GIF", "bmp": "BMP"}
DATA_URI = re.compile(r"data:image/([A-Za-z0-9.+-]+);base64,")
MAX_SEED = 2**63  # torch seeds are 64-bit; row k of a job draws from seed + k


class ApiError(Exception):
    """A request the server answers with ``status`` and the JSON error body; ``param`` names the bad field."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.headers = status, message, type, param, headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param}}


def invalid(param: str | None, message: str, type: str = "invalid_request_error") -> ApiError:
    return ApiError(400, message, type=type, param=param)


@dataclass(frozen=True)
class GenerateRequest:
    job: Job
    stream: bool


def parse_generate(raw: bytes, defaults: GenerationConfig, max_pixels: int) -> GenerateRequest:
    """A ``POST /v1/generate`` body -> the job (``defaults`` with the body's config fields) and its stream flag."""
    body = parse_object(raw)
    unknown(body, GENERATE_KEYS)
    config = make_config(defaults, {k: v for k, v in body.items() if k in CONFIG_FIELDS})
    job = Job(prompt=parse_prompt(body.get("prompt"), max_pixels), config=config,
              seed=check_seed(body.get("seed")), return_ids=check_bool(body, "return_ids"))
    return GenerateRequest(job, check_bool(body, "stream"))


def parse_object(raw: bytes) -> dict:
    """The body as a JSON object (NaN and Infinity, which JSON lacks, refused)."""
    def no_constant(name: str):
        raise ValueError(f"{name} is not JSON")

    try:
        body = json.loads(raw, parse_constant=no_constant)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise invalid(None, f"the body is not valid JSON: {e}", "invalid_json") from None
    if not isinstance(body, dict):
        raise invalid(None, f"the body must be a JSON object, got {type(body).__name__}", "invalid_json")
    return body


def unknown(body: dict, known: tuple[str, ...]) -> None:
    names = sorted(set(body) - set(known))
    if names:
        hint = "".join(f"; for {k} use {HF_HINTS[k]}" for k in names if k in HF_HINTS)
        raise invalid(names[0], f"unknown field(s) {names}{hint}; this endpoint takes {sorted(known)}",
                      "unknown_field")


def make_config(defaults: GenerationConfig, given: dict) -> GenerationConfig:
    """``defaults`` with ``given`` fields, each type-checked, then range-checked alone so the error names it."""
    typed = {name: typed_value(name, value, _HINTS[name]) for name, value in given.items()}
    for name, value in typed.items():
        try:
            defaults.replace(**{name: value})
        except ValueError as e:
            raise invalid(name, str(e), "invalid_value") from None
    return defaults.replace(**typed)


def typed_value(name: str, value, hint):
    """``value`` if it has the JSON type of the field (an int does for a float; a list of strings or one string
    for a tuple), else an ApiError naming the field."""
    args = typing.get_args(hint)
    if type(None) in args:
        if value is None:
            return None
        (hint,) = [a for a in args if a is not type(None)]
    if typing.get_origin(hint) is tuple:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        want = "a string or a list of strings"
    else:
        number = hint in (int, float) and not isinstance(value, bool)
        checks = {bool: (isinstance(value, bool), "true or false"), str: (isinstance(value, str), "a string"),
                  int: (number and isinstance(value, int), "an integer"),
                  float: (number and isinstance(value, (int, float)), "a number")}
        ok, want = checks.get(hint, (True, ""))  # a type not listed here: GenerationConfig checks the value
        if ok:
            return value
    nullable = " or null" if type(None) in args else ""
    raise invalid(name, f"{name} must be {want}{nullable}, got {json.dumps(value)[:60]}", "wrong_type")


def check_bool(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise invalid(name, f"{name} must be true or false, got {json.dumps(value)[:60]}", "wrong_type")
    return value


def check_seed(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid("seed", f"seed must be an integer or null, got {json.dumps(value)[:60]}", "wrong_type")
    if not 0 <= value < MAX_SEED:
        raise invalid("seed", f"seed must lie in [0, 2**63), got {value}", "invalid_value")
    return value


def parse_prompt(value, max_pixels: int) -> Document:
    """``[{"text": str} | {"image": data URI}, ...]`` (or one string) -> Document, images decoded."""
    if isinstance(value, str):
        value = [{TEXT_KIND: value}]
    if not isinstance(value, list) or not value:
        raise invalid("prompt", 'prompt must be a non-empty list of segments {"text": ...} / {"image": "data:..."} '
                                "(or a string)", "wrong_type" if value is not None else "missing_field")
    segments = []
    for i, segment in enumerate(value):
        where = f"prompt[{i}]"
        if not isinstance(segment, dict) or len(segment) != 1 or not set(segment) <= {TEXT_KIND, IMAGE_KIND}:
            raise invalid(where, f'{where} must be {{"text": str}} or {{"image": "data:image/...;base64,..."}}, '
                                 f"got {json.dumps(segment)[:60]}", "wrong_type")
        ((kind, v),) = segment.items()
        if not isinstance(v, str):
            raise invalid(where, f"{where}.{kind} must be a string, got {json.dumps(v)[:60]}", "wrong_type")
        segments.append(Text(check_text(v, where)) if kind == TEXT_KIND else Image(decode_image(v, where, max_pixels)))
    return Document(segments)


def check_text(text: str, where: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid(where, f"{where} holds a lone UTF-16 surrogate, which no text can hold", "invalid_value") \
            from None
    return text


def decode_image(uri: str, where: str, max_pixels: int) -> PILImage.Image:
    """A ``data:image/<format>;base64,...`` URI -> the image: its header's size checked against ``max_pixels``
    before any pixel is decoded. Anything else (a path, ``file://``, ``http://``) is refused unread."""
    match = DATA_URI.match(uri)
    if match is None:
        raise invalid(where, f"{where}: an image must be a data:image/<format>;base64,... URI (formats "
                             f"{sorted(IMAGE_FORMATS)}); this server opens no path or URL for a client, got "
                             f"{uri[:40]!r}", "invalid_image")
    if match.group(1).lower() not in IMAGE_FORMATS:
        raise invalid(where, f"{where}: image/{match.group(1)} is not accepted; use one of {sorted(IMAGE_FORMATS)}",
                      "invalid_image")
    try:
        raw = base64.b64decode(uri[match.end():], validate=True)
    except (binascii.Error, ValueError) as e:
        raise invalid(where, f"{where}: the data URI's base64 is invalid: {e}", "invalid_image") from None
    try:
        with PILImage.open(io.BytesIO(raw), formats=sorted(set(IMAGE_FORMATS.values()))) as probe:
            width, height = probe.size  # read from the header; nothing is decoded yet
    except PILImage.DecompressionBombError as e:
        raise invalid(where, f"{where}: the image is too large: {e}", "image_too_large") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise invalid(where, f"{where}: cannot decode the image: {e}", "invalid_image") from None
    if width * height > max_pixels:
        raise invalid(where, f"{where}: the image is {width}x{height} = {width * height} pixels, over this server's "
                             f"limit of {max_pixels} (--max-image-pixels)", "image_too_large")
    try:
        return load_image(raw)[0]
    except ImageError as e:
        raise invalid(where, f"{where}: {e}", "invalid_image") from None
