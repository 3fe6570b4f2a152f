"""The HTTP app of ``fusion serve``: the native ``POST /v1/generate``, the OpenAI-compatible
``POST /v1/chat/completions`` (``openai_compat.py``), ``GET /v1/models``, ``/health``, ``/metrics`` and the
playground page at ``/``.

``create_app`` only wires routes to a started ``Scheduler``; the requests' checks live in ``requests.py``, the
counting in ``metrics.py``. With ``api_key`` every route but ``/health`` and ``/`` (the page holds no secret; its
requests carry the key typed into it) wants ``Authorization: Bearer <key>``. Every error is
``{"error": {"message", "type", "param"}}``, the shape OpenAI's clients read.
"""

from __future__ import annotations

import hmac
import time
from importlib import resources

from fastapi import Depends, FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, JSONResponse, Response

from fusion.document import IMAGE_KIND, TEXT_KIND
from fusion.images import to_data_uri
from fusion.serve import openai_compat
from fusion.serve.jobs import Event, Job
from fusion.serve.metrics import CONTENT_TYPE, Metrics
from fusion.serve.requests import ApiError, parse_generate
from fusion.serve.streams import collect, read_body, sse, sse_response, submit, unfinished


def create_app(scheduler, *, model_name: str, api_key: str | None = None,
               max_image_pixels: int = 16_000_000) -> FastAPI:
    """The app serving ``scheduler``'s model under ``model_name``; refuses prompt images over ``max_image_pixels``."""
    app = FastAPI(title="fusion", docs_url=None, redoc_url=None, openapi_url=None)  # no CDN pages, no open schema
    app.state.metrics = metrics = Metrics(scheduler)
    guard = [Depends(bearer(api_key))] if api_key else []
    page = resources.files("fusion.serve").joinpath("static/playground.html").read_text(encoding="utf-8")
    created = int(time.time())
    add_error_handlers(app, metrics)

    @app.get("/", include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model_name}

    @app.get("/metrics", dependencies=guard)
    async def metrics_text() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models", dependencies=guard)
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "fusion"}]}

    @app.post("/v1/generate", dependencies=guard)
    async def generate(request: Request) -> Response:
        parsed = await run_in_threadpool(parse_generate, await read_body(request), scheduler.fusion.generation_config,
                                         max_image_pixels)  # decoding images off the event loop
        ticket = await submit(scheduler, parsed.job)
        events = metrics.watch(ticket, "/v1/generate")
        if parsed.stream:
            return sse_response(native_stream(events, parsed.job))
        result = await collect(request, events, parsed.job.config.num_return_sequences)
        if (failed := unfinished(result)) is not None:
            return failed
        rows, last = result
        return JSONResponse({"documents": [d.to_json() for d in rows.documents], **done_fields(last, parsed.job)})

    app.include_router(openai_compat.router(scheduler, metrics, model_name=model_name,
                                            max_image_pixels=max_image_pixels), dependencies=guard)
    return app


def done_fields(event: Event, job: Job) -> dict:
    """The done event's finish reasons, usage and (when asked for) ids."""
    u = event.usage
    out = {"finish_reasons": event.finish_reasons,
           "usage": {"prompt_tokens": u.prompt_tokens, "generated_tokens": u.generated_tokens, "images": u.images,
                     "forward_passes": u.forward_passes} if u else None}
    if job.return_ids:
        out["ids"] = event.ids
    return out


async def native_stream(events, job: Job):
    """``/v1/generate``'s events: text {row, text}, image {row, image: PNG data URI}, then done or error."""
    async for event in events:
        if event.kind == TEXT_KIND:
            yield sse({"row": event.row, "text": event.text}, "text")
        elif event.kind == IMAGE_KIND:
            yield sse({"row": event.row, "image": to_data_uri(event.image)}, "image")
        elif event.kind == "done":
            yield sse(done_fields(event, job), "done")
        else:
            yield sse({"message": event.message}, "error")


def bearer(api_key: str):
    """A dependency that wants ``Authorization: Bearer <api_key>``, compared in constant time."""
    expected = f"Bearer {api_key}".encode()

    async def check(request: Request) -> None:
        given = request.headers.get("authorization", "").encode("latin-1")  # the header's own bytes
        if not hmac.compare_digest(given, expected):
            raise ApiError(401, "a missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                           type="authentication_error", headers={"WWW-Authenticate": "Bearer"})

    return check


def add_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Every refusal as ``{"error": {...}}``, counted by outcome."""
    def answer(request: Request, error: ApiError) -> JSONResponse:
        route = request.scope.get("route")
        metrics.refused(getattr(route, "path", "unmatched"), error.status)
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return answer(request, error)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:  # 404, 405
        return answer(request, ApiError(error.status_code, str(error.detail), type="invalid_request_error",
                                        headers=getattr(error, "headers", None)))
