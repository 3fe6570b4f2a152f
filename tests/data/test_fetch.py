"""Fetching image URLs against a local server: retries of transient failures only, a content-addressed cache that
remembers permanent failures, a size limit, bounded concurrency, and a clear error offline."""

import hashlib
import json
import socket

import pytest

from fusion.data.fetch import FetchConfig, Fetcher, ImageCache, OfflineError

from .conftest import Route, png_bytes

FAST = FetchConfig(workers=4, timeout_s=0.3, retries=2, backoff_s=0.01)


def test_transient_failures_are_retried_permanent_ones_are_not_and_remembered(http_server, tmp_path):
    ok, flaky = png_bytes((1, 2, 3)), png_bytes((4, 5, 6))
    http_server.routes.update({
        "/ok.png": Route(ok), "/flaky.png": Route(flaky, fail_first=2), "/gone.png": Route(status=404),
        "/removed.png": Route(status=410), "/forbidden.png": Route(status=403),
        "/slow.png": Route(ok, sleep=1.0)})  # answers after the client's 0.3 s timeout
    urls = [http_server.url(p) for p in ("/ok.png", "/flaky.png", "/gone.png", "/removed.png", "/forbidden.png",
                                          "/slow.png", "/ok.png")]  # a duplicate is fetched once
    cache = ImageCache(tmp_path / "cache")
    fetcher = Fetcher(cache, FAST)
    assert fetcher.fetch_all(urls) == 4
    # retries = 2: a transient failure is tried 3 times, a 4xx once
    assert dict(http_server.requests) == {"/ok.png": 1, "/flaky.png": 3, "/gone.png": 1, "/removed.png": 1,
                                          "/forbidden.png": 1, "/slow.png": 3}
    assert fetcher.outcomes["fetched"] == 2 and fetcher.outcomes["failed: HTTP 404"] == 1
    assert fetcher.outcomes["failed: HTTP 410"] == 1 and fetcher.outcomes["failed: HTTP 403"] == 1
    assert sum(n for k, n in fetcher.outcomes.items() if "timed out" in k) == 1

    # content-addressed: sha256 of the URL names the file; the record holds the bytes' hash
    key = hashlib.sha256(http_server.url("/flaky.png").encode()).hexdigest()
    path = cache.lookup(http_server.url("/flaky.png"))
    assert path == tmp_path / "cache" / key[:2] / key and path.read_bytes() == flaky
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["sha256"] == hashlib.sha256(flaky).hexdigest() and record["bytes"] == len(flaky)
    assert cache.lookup(http_server.url("/gone.png")) == "HTTP 404"
    # transient: recorded for offline runs, retried by runs that may fetch
    assert "timed out" in cache.lookup(http_server.url("/slow.png"))
    assert cache.lookup(http_server.url("/slow.png"), retry_transient=True) is None

    # a later run asks the server only for what may still succeed
    again = Fetcher(cache, FAST)
    assert again.fetch_all(urls) == 1
    assert http_server.requests["/slow.png"] == 6 and sum(http_server.requests.values()) == 13
    assert again.outcomes["cached"] == 5


def test_responses_over_the_size_limit_are_refused(http_server, tmp_path):
    http_server.routes["/big.png"] = Route(b"x" * 5000)
    fetcher = Fetcher(ImageCache(tmp_path), FetchConfig(max_bytes=1000, retries=2, backoff_s=0.01))
    assert fetcher.fetch_all([http_server.url("/big.png")]) == 1
    assert http_server.requests["/big.png"] == 1
    assert "over the limit of 1000" in ImageCache(tmp_path).lookup(http_server.url("/big.png"))


def test_concurrency_is_bounded_by_workers(http_server, tmp_path):
    for i in range(12):
        http_server.routes[f"/{i}.png"] = Route(png_bytes(), sleep=0.15)
    fetcher = Fetcher(ImageCache(tmp_path), FetchConfig(workers=3))
    assert fetcher.fetch_all([http_server.url(f"/{i}.png") for i in range(12)]) == 0
    assert http_server.max_in_flight == 3


def test_offline_is_an_error_that_says_how_to_fetch(http_server, tmp_path):
    url = http_server.url("/a.png")
    http_server.routes["/a.png"] = Route(png_bytes())
    with pytest.raises(OfflineError, match="fusion fetch-images CORPUS --image-cache DIR"):
        Fetcher(ImageCache(tmp_path), FAST, enabled=False).ensure([url])
    assert http_server.requests["/a.png"] == 0
    with socket.socket() as s:  # a port nothing listens on: connection refused, as with no network
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/a.png"
    with pytest.raises(OfflineError, match="no server answered.*fusion fetch-images"):
        Fetcher(ImageCache(tmp_path), FAST).ensure([dead])
    Fetcher(ImageCache(tmp_path), FAST, enabled=False).ensure([])  # nothing missing: fine offline
