"""From a submitted job to an HTTP answer, for both APIs: submitting (refusals as ``ApiError``), Server-Sent
Events, and reading a job to its end for a non-streamed answer while watching for the client to leave."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from fusion.document import IMAGE_KIND, Document, Image, Text
from fusion.serve.jobs import Event, Job, QueueFull, Ticket
from fusion.serve.requests import ApiError

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy may hold events back
MAX_BODY_BYTES = 100 * 2**20  # room for a few prompt images at the pixel limit, base64-encoded
CLIENT_CLOSED = 499  # nginx's status for a request whose client left before the answer


async def submit(scheduler, job: Job) -> Ticket:
    """``scheduler.submit`` in a worker thread (it encodes the prompt's images), its events bound for this loop;
    its refusals as HTTP errors: 400 (the job cannot run here), 429 (the queue is full; ``Retry-After``), 503 (the
    server is stopping)."""
    try:
        return await run_in_threadpool(scheduler.submit, job, asyncio.get_running_loop())
    except QueueFull as e:
        raise ApiError(429, str(e), type="queue_full", headers={"Retry-After": str(e.retry_after)}) from None
    except ValueError as e:  # too many rows, a prompt longer than the context, ...
        raise ApiError(400, str(e), type="invalid_request_error") from None
    except RuntimeError as e:
        raise ApiError(503, str(e), type="unavailable") from None


async def read_body(request: Request) -> bytes:
    """The request's body, refused with 413 past ``MAX_BODY_BYTES`` before more is read (Content-Length or not)."""
    limit = MAX_BODY_BYTES
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the body has {declared} bytes; this server takes at most {limit}", type="too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the body is over {limit} bytes, the most this server takes", type="too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def sse(data: dict | str, event: str | None = None) -> str:
    """One Server-Sent Event: an optional ``event:`` line and one ``data:`` line (JSON has no raw newline)."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return (f"event: {event}\n" if event else "") + f"data: {payload}\n\n"


def sse_response(chunks: AsyncIterator[str]) -> StreamingResponse:
    """A ``text/event-stream`` answer; when the client disconnects, starlette cancels ``chunks`` (and so, through
    ``Metrics.watch``, the job)."""
    return StreamingResponse(chunks, media_type="text/event-stream", headers=SSE_HEADERS)


class Rows:
    """Each output row's pieces so far, as Document segments (consecutive text pieces in one Text)."""

    def __init__(self, n: int) -> None:
        self.documents = [Document() for _ in range(n)]

    def add(self, event: Event) -> None:
        segments = self.documents[event.row].segments
        if event.kind == IMAGE_KIND:
            segments.append(Image(event.image))
        elif segments and isinstance(segments[-1], Text):
            segments[-1] = Text(segments[-1].text + event.text)
        else:
            segments.append(Text(event.text))


async def collect(request: Request, events: AsyncIterator[Event], rows: int) -> tuple[Rows, Event] | None:
    """The job's rows and its last event (done or error); None if the client left first (the job is then
    cancelled by ``events``' reader stopping)."""
    async def read() -> tuple[Rows, Event]:
        out = Rows(rows)
        async for event in events:
            if event.kind in ("done", "error"):
                return out, event
            out.add(event)
        raise RuntimeError("a job's events ended without done or error")

    reading, leaving = asyncio.ensure_future(read()), asyncio.ensure_future(disconnected(request))
    try:
        await asyncio.wait({reading, leaving}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        leaving.cancel()
        if not reading.done():
            reading.cancel()
        await asyncio.gather(reading, leaving, return_exceptions=True)
        await events.aclose()  # type: ignore[attr-defined]
    return None if reading.cancelled() else reading.result()


def unfinished(result: tuple[Rows, Event] | None) -> Response | None:
    """The answer to a job that did not reach done: 499 if its client left, 500 if it failed; else None."""
    if result is None:
        return Response(status_code=CLIENT_CLOSED)
    if result[1].kind == "error":
        return JSONResponse(ApiError(500, result[1].message, type="server_error").body(), status_code=500)
    return None


async def disconnected(request: Request) -> None:
    """Returns when the client disconnects (the body has been read: what is left to receive is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
