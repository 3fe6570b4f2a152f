"""Raw rows of ``datasets`` sources: ``save_to_disk`` folders, image folders, hub datasets and builders, streamed.

Every source is read as an ``IterableDataset`` with media decoding off, so images arrive as undecoded
``{"bytes", "path"}`` dicts and a corrupt one costs only itself (fusion opens them, counting failures).
Local folders never reach for the network; ``hf:NAME`` sources do where it works.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from fusion.data.spec import HF_PREFIX, Source


def _datasets(local: bool):
    if local:
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # read before datasets' first import
    import datasets

    return datasets


def load(source: Source):
    """The source as an IterableDataset of undecoded rows."""
    datasets = _datasets(local=source.format != "hf" or bool(source.data_files or source.data_dir))
    if source.format == "saved":
        ds = datasets.load_from_disk(source.path)
        if isinstance(ds, datasets.DatasetDict):
            if source.split not in ds:
                raise ValueError(f"{source.path}: no split {source.split!r} (splits: {sorted(ds)})")
            ds = ds[source.split]
    elif source.format == "imagefolder":
        ds = datasets.load_dataset("imagefolder", data_dir=source.path, split=source.split, streaming=True)
    else:
        ds = _from_hub(datasets, source)
    if isinstance(ds, datasets.Dataset):
        ds = ds.to_iterable_dataset()
    return ds.decode(False)


def _from_hub(datasets, source: Source):
    name = source.path.removeprefix(HF_PREFIX)
    kwargs = {k: v for k, v in dict(data_files=source.data_files, data_dir=source.data_dir,
                                    revision=source.revision).items() if v is not None}
    try:
        return datasets.load_dataset(name, source.config, split=source.split, streaming=source.streaming, **kwargs)
    except (ConnectionError, OSError, ValueError) as e:
        raise ValueError(f"{source.path}: cannot load the dataset ({type(e).__name__}: {e}); hub datasets need the "
                         "network (or a local copy: save_to_disk, or hf:parquet?data_files=...)") from e


def hf_rows(source: Source) -> Iterator[tuple[str, dict[str, Any]]]:
    for i, row in enumerate(load(source), 1):
        yield f"{source.label}:row {i}", row
