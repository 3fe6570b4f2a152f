"""``fusion fetch-images``: fetch the image URLs of a corpus into the local cache its readers use offline."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from fusion.cli.corpus_args import add_data_args, corpus_spec
from fusion.cli.flags import add_config_flags, config_overrides
from fusion.data.fetch import FetchConfig


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fusion fetch-images", description=__doc__.splitlines()[0])
    add_data_args(ap, skip=("fetch",))
    add_config_flags(ap, FetchConfig)
    args = ap.parse_args(argv)

    from tqdm.contrib.logging import logging_redirect_tqdm

    from fusion.data.corpus import rows_of
    from fusion.data.fetch import Fetcher, ImageCache, default_cache
    from fusion.data.report import IngestReport
    from fusion.rows import IMAGE_KIND, is_url

    spec, report = corpus_spec(args), IngestReport()
    cache = ImageCache(spec.image_cache or default_cache())
    with logging_redirect_tqdm():
        urls = [v for _, _, parts in rows_of(spec, report) for kind, v in parts if kind == IMAGE_KIND and is_url(v)]
        fetcher = Fetcher(cache, FetchConfig(**config_overrides(args, FetchConfig)), progress=True)
        failed = fetcher.fetch_all(urls)
    print(f"{len(set(urls))} image URL(s) in {report.rows} rows; cache {cache.root}:")
    for outcome, n in fetcher.outcomes.most_common():
        print(f"  {outcome}: {n}")
    print(report.summary("rows read"))
    return 1 if failed and failed == len(set(urls)) else 0
