"""Image URLs -> a local content-addressed cache, fetched with bounded concurrency, timeouts, retries and a size limit.

The cache keeps a URL's bytes at ``ROOT/ab/<sha256 of the URL>`` and a record beside them (``.json``: the URL,
the bytes' sha256 and size, or why it failed), so a later run neither fetches a URL again nor retries one that
cannot succeed (HTTP 404 / 410 / another 4xx, over the size limit). Transient failures (5xx, 408, 429, timeouts,
connection resets) are retried with exponential backoff; if they persist they are recorded as transient: a
later run that may fetch tries them again, an offline run skips them (counted) instead of stopping.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from fusion.files import atomic_path, read_json, write_json

log = logging.getLogger(__name__)

URL_FAILED = "image URL failed"  # the skip cause of an image whose URL could not be fetched
USER_AGENT = "fusion-fetch-images/0.1 (+https://github.com/)"
FETCH_HOWTO = "fetch them with `fusion fetch-images CORPUS --image-cache DIR` where the network works"
CHUNK = 1024  # URLs handed to the thread pool at a time, so a list of millions holds few futures


def default_cache() -> Path:
    """``$FUSION_IMAGE_CACHE``, else ``$XDG_CACHE_HOME/fusion/images`` (``~/.cache/fusion/images``)."""
    if os.environ.get("FUSION_IMAGE_CACHE"):
        return Path(os.environ["FUSION_IMAGE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fusion" / "images"


@dataclass(frozen=True)
class FetchConfig:
    """How image URLs are fetched."""

    workers: int = field(default=16, metadata={"help": "requests in flight at once"})
    timeout_s: float = field(default=20.0, metadata={"help": "seconds to connect, and between bytes received"})
    retries: int = field(default=3, metadata={"help": "retries of a transient failure (5xx, timeout, reset)"})
    backoff_s: float = field(default=1.0, metadata={"help": "wait before the first retry, doubled each retry"})
    max_bytes: int = field(default=50 * 1024 * 1024, metadata={"help": "larger responses are refused"})


class FetchFailed(Exception):
    """One URL that could not be fetched; ``permanent`` failures are not retried, ``reached`` says a server
    answered (the network works)."""

    def __init__(self, message: str, *, permanent: bool, reached: bool) -> None:
        super().__init__(message)
        self.permanent, self.reached = permanent, reached


class OfflineError(RuntimeError):
    """Image URLs that are not in the cache while fetching is off or the network is unreachable."""


class ImageCache:
    """URL -> the fetched bytes on disk (content-addressed by the URL's sha256), or a permanent failure."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def _base(self, url: str) -> Path:
        key = hashlib.sha256(url.encode("utf-8")).hexdigest()
        return self.root / key[:2] / key

    def lookup(self, url: str, *, retry_transient: bool = False) -> Path | str | None:
        """The cached file, the message of a recorded failure, or None when the URL is to be fetched (never tried,
        or a transient failure and ``retry_transient``)."""
        base = self._base(url)
        record = base.with_suffix(".json")
        if not record.is_file():
            return None
        info = read_json(record)
        if "error" not in info:
            return base
        return None if retry_transient and not info["permanent"] else info["error"]

    def store(self, url: str, data: bytes) -> Path:
        base = self._base(url)
        with atomic_path(base) as tmp:
            tmp.write_bytes(data)
        write_json(base.with_suffix(".json"), {"url": url, "bytes": len(data),
                                               "sha256": hashlib.sha256(data).hexdigest()})
        return base

    def store_failure(self, url: str, message: str, *, permanent: bool) -> None:
        write_json(self._base(url).with_suffix(".json"), {"url": url, "error": message, "permanent": permanent})


def fetch(url: str, cfg: FetchConfig) -> bytes:
    """The URL's bytes, retrying transient failures with exponential backoff; raises FetchFailed."""
    attempt = 0
    while True:
        try:
            return _get(url, cfg)
        except FetchFailed as e:
            if e.permanent or attempt == cfg.retries:
                raise
        time.sleep(cfg.backoff_s * 2**attempt)
        attempt += 1


def _get(url: str, cfg: FetchConfig) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=cfg.timeout_s) as response:
            size = response.headers.get("Content-Length")
            if size and size.isdigit() and int(size) > cfg.max_bytes:
                raise FetchFailed(f"{size} bytes, over the limit of {cfg.max_bytes}", permanent=True, reached=True)
            data = response.read(cfg.max_bytes + 1)
    except urllib.error.HTTPError as e:
        transient = e.code >= 500 or e.code in (408, 429)
        raise FetchFailed(f"HTTP {e.code}", permanent=not transient, reached=True) from None
    except urllib.error.URLError as e:  # no server answered: refused, unknown host, unreachable network
        raise FetchFailed(f"{e.reason}", permanent=False, reached=False) from None
    except (TimeoutError, ConnectionError, http.client.HTTPException, OSError) as e:  # failed mid-response
        raise FetchFailed(f"{type(e).__name__}: {e}", permanent=False, reached=True) from None
    if len(data) > cfg.max_bytes:
        raise FetchFailed(f"over the limit of {cfg.max_bytes} bytes", permanent=True, reached=True)
    return data


class Fetcher:
    """Fills an ImageCache from URLs, ``cfg.workers`` at a time, counting outcomes."""

    def __init__(self, cache: ImageCache, cfg: FetchConfig | None = None, *, enabled: bool = True,
                 progress: bool = False) -> None:
        self.cache, self.cfg, self.enabled, self.progress = cache, cfg or FetchConfig(), enabled, progress
        self.outcomes: Counter[str] = Counter()  # "fetched", "cached", "failed: <why>"
        self.failures: dict[str, str] = {}  # URL -> why, for URLs that failed in this run (not retried again)
        self.reached = False  # a server has answered at least once: the network works

    def status(self, url: str) -> Path | str | None:
        """The cached file, why the URL failed (in this run or a recorded one this fetcher will not retry), or None
        when it is to be fetched."""
        if url in self.failures:
            return self.failures[url]
        return self.cache.lookup(url, retry_transient=self.enabled)

    def ensure(self, urls: Iterable[str]) -> None:
        """Fetch every URL the cache lacks; an OfflineError when fetching is off or no server answers."""
        missing = sorted({u for u in urls if self.status(u) is None})
        if not missing:
            return
        if not self.enabled:
            raise OfflineError(f"{len(missing)} image URL(s) are not in the cache {self.cache.root} (e.g. "
                               f"{missing[0]}) and fetching is off (--no-fetch); {FETCH_HOWTO}")
        failed = self.fetch_all(missing)
        if failed == len(missing) and not self.reached:
            raise OfflineError(f"no server answered for {len(missing)} image URL(s) (e.g. {missing[0]}): the "
                               f"network seems down, and the cache {self.cache.root} lacks them; {FETCH_HOWTO}")

    def fetch_all(self, urls: Iterable[str]) -> int:
        """Fetch ``urls`` (already cached ones are counted, not fetched); returns the number that failed."""
        todo = []
        for url in dict.fromkeys(urls):
            if self.cache.lookup(url, retry_transient=True) is None:
                todo.append(url)
            else:
                self.outcomes["cached"] += 1
        failed = 0
        bar = tqdm(total=len(todo), desc="fetch images", unit="url", disable=not self.progress or not todo)
        with ThreadPoolExecutor(max_workers=self.cfg.workers) as pool:  # at most ``workers`` requests in flight
            for start in range(0, len(todo), CHUNK):
                chunk = todo[start:start + CHUNK]
                for url, (error, reached) in zip(chunk, pool.map(self._one, chunk), strict=True):
                    self.outcomes["fetched" if error is None else f"failed: {error}"] += 1
                    self.reached |= reached
                    if error is not None:
                        self.failures[url] = error
                        failed += 1
                    bar.update(1)
                    bar.set_postfix(failed=failed)
        bar.close()
        return failed

    def _one(self, url: str) -> tuple[str | None, bool]:
        """(why it failed or None, whether a server answered) of fetching one URL into the cache (in a worker
        thread)."""
        try:
            data = fetch(url, self.cfg)
        except FetchFailed as e:
            if e.reached:  # when no server answered, the failure says nothing about the URL
                self.cache.store_failure(url, str(e), permanent=e.permanent)
            return str(e), e.reached
        self.cache.store(url, data)
        return None, True
