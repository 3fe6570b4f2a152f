"""One way to name a corpus, for every trainer and the Python API: a ``CorpusSpec`` of ``Source`` s.

On the command line a source is ``LOCATION[?OPTION=VALUE&...][:WEIGHT]``; several sources make a mixture:

    fusion train a.jsonl:0.7 obelics.parquet:0.3
    fusion train-vq photos/ 'hf:HuggingFaceM4/OBELICS?split=train&streaming=true' synthetic?n=500
    fusion train-bpe corpus.yaml

LOCATION is a ``.jsonl`` / ``.parquet`` / ``.txt`` file, a ``datasets.save_to_disk`` folder, an image folder
(``metadata.jsonl`` captions optional), ``hf:NAME`` (a hub dataset or a ``datasets`` builder such as
``hf:parquet?data_files=...``; ``streaming=true`` streams it), or ``synthetic`` (the embedded world). OPTIONS are
``Source`` fields. One ``.yaml`` / ``.json`` file can hold the whole spec (paths relative to it):

    sources:
      - a.jsonl:0.7                      # the command-line form, or a mapping of Source fields:
      - {path: obelics.parquet, weight: 0.3}
    image_cache: /data/image-cache
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

SPEC_SUFFIXES = (".yaml", ".yml", ".json")
FILE_FORMATS = {".jsonl": "jsonl", ".parquet": "parquet", ".txt": "text"}
HF_PREFIX, SYNTHETIC = "hf:", "synthetic"
SAVED_DATASET_FILES = ("dataset_info.json", "dataset_dict.json", "state.json")
DEFAULT_SYNTHETIC_DOCS = 1000


@dataclass(frozen=True)
class Source:
    """One source of a corpus: where it is, its mixture weight, and how to read it."""

    path: str
    weight: float | None = None      # mixture weight (share of training tokens); None: its natural share
    format: str | None = None        # jsonl | parquet | text | saved | imagefolder | hf | synthetic (None: guessed)
    split: str = "train"             # datasets: the split
    config: str | None = None        # datasets: the configuration name
    revision: str | None = None      # datasets hub: the revision (a commit pins the data)
    data_files: str | None = None    # datasets builders (hf:parquet, hf:json, hf:imagefolder): files or a glob
    data_dir: str | None = None      # datasets builders: a folder
    streaming: bool = False          # datasets: stream rows instead of downloading and preparing
    image_column: str | None = None  # a column to read as the rows' "image" (e.g. jpg)
    text_column: str | None = None   # a column to read as the rows' "text" (e.g. txt, caption)
    n: int | None = None             # synthetic: documents (default 1000; train-vq: its train_images)
    seed: int = 0                    # synthetic: the world's seed

    def __post_init__(self) -> None:
        if self.weight is not None and not self.weight > 0:
            raise ValueError(f"{self.path}: a mixture weight must be positive, got {self.weight}")
        if self.format is None:
            object.__setattr__(self, "format", _guess_format(self.path))
        if self.format not in (*FILE_FORMATS.values(), "saved", "imagefolder", "hf", SYNTHETIC):
            raise ValueError(f"{self.path}: unknown format {self.format!r}")

    @classmethod
    def parse(cls, text: str, base_dir: str | os.PathLike | None = None) -> Source:
        """``LOCATION[?OPTION=VALUE&...][:WEIGHT]``; a relative file path resolves against ``base_dir``."""
        weight = None
        head, sep, tail = text.rpartition(":")
        if sep and head and not Path(text).exists() and _is_number(tail):
            text, weight = head, float(tail)
        location, _, query = text.partition("?")
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
        options = {k: _convert(cls, k, v, text) for k, v in pairs}
        return cls(path=_resolve(location, base_dir), weight=weight, **options)

    @property
    def name(self) -> str:
        """A short readable name (for folder names and reports)."""
        stem = self.path.removeprefix(HF_PREFIX).rstrip("/").replace("/", "_")
        stem = Path(stem).stem if self.format in FILE_FORMATS.values() else Path(stem).name
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:48] or self.format

    @property
    def renames(self) -> dict[str, str]:
        """Column -> the name the row shapes know it by (from ``image_column`` / ``text_column``)."""
        return {k: v for k, v in ((self.image_column, "image"), (self.text_column, "text")) if k}

    @property
    def label(self) -> str:
        """How rows name their source: the path, or for a ``datasets`` builder its data files / folder."""
        return (self.data_files or self.data_dir or self.path) if self.format == "hf" else self.path

    @property
    def base_dir(self) -> Path | None:
        """Where relative image paths of its rows resolve: a file's folder, a folder itself (None for the hub)."""
        if self.format == SYNTHETIC or (self.format == "hf" and self.label == self.path):
            return None
        path = Path(self.label)
        return path if path.is_dir() else path.parent

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CorpusSpec:
    """Sources (a mixture when weighted) and where fetched image URLs are cached."""

    sources: tuple[Source, ...]
    image_cache: str | None = field(default=None, metadata={
        "help": "folder of fetched image URLs (default: $FUSION_IMAGE_CACHE or ~/.cache/fusion/images)"})
    fetch: bool = field(default=True, metadata={
        "help": "fetch image URLs missing from the cache while reading (--no-fetch: offline, missing ones are an "
                "error that says how to fetch them)"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(self.sources))
        if not self.sources:
            raise ValueError("a corpus needs at least one source")
        weighted = [s.weight is not None for s in self.sources]
        if any(weighted) and not all(weighted):
            raise ValueError("give a mixture weight to every source or to none: "
                             + ", ".join(f"{s.path}: {s.weight}" for s in self.sources))

    @classmethod
    def parse(cls, args: str | Sequence[str], **overrides) -> CorpusSpec:
        """Command-line sources (``PATH[:WEIGHT]`` ...) or one YAML / JSON spec file; ``overrides`` set fields."""
        args = [args] if isinstance(args, (str, os.PathLike)) else [str(a) for a in args]
        if len(args) == 1 and str(args[0]).endswith(SPEC_SUFFIXES) and Path(args[0]).is_file():
            return dataclasses.replace(cls.from_file(args[0]), **overrides)
        return cls(tuple(Source.parse(a) for a in args), **overrides)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> CorpusSpec:
        """A YAML / JSON spec: ``sources`` (strings or mappings of Source fields) and the other fields."""
        path = Path(path)
        text = path.read_text()
        if path.suffix == ".json":
            raw = json.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text)
        if not isinstance(raw, dict) or not isinstance(raw.get("sources"), list):
            raise ValueError(f"{path}: a corpus spec is a mapping with a 'sources' list")
        unknown = set(raw) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown corpus spec keys {sorted(unknown)}")
        sources = [Source.parse(s, path.parent) if isinstance(s, str) else _source_from_mapping(s, path)
                   for s in raw["sources"]]
        return cls(tuple(sources), **{k: v for k, v in raw.items() if k != "sources"})

    @property
    def weighted(self) -> bool:
        return self.sources[0].weight is not None

    def to_dict(self) -> dict:
        return {"sources": [s.to_dict() for s in self.sources], "image_cache": self.image_cache, "fetch": self.fetch}


def _source_from_mapping(raw: object, spec_file: Path) -> Source:
    if not isinstance(raw, dict) or "path" not in raw:
        raise ValueError(f"{spec_file}: a source is a string or a mapping with a 'path', got {raw!r:.80}")
    unknown = set(raw) - {f.name for f in dataclasses.fields(Source)}
    if unknown:
        raise ValueError(f"{spec_file}: unknown source keys {sorted(unknown)} (known: "
                         f"{[f.name for f in dataclasses.fields(Source)]})")
    return Source(**{**raw, "path": _resolve(str(raw["path"]), spec_file.parent)})


def _guess_format(path: str) -> str:
    if path.startswith(HF_PREFIX):
        return "hf"
    if path == SYNTHETIC:
        return SYNTHETIC
    p = Path(path)
    if p.is_dir():
        return "saved" if any((p / f).is_file() for f in SAVED_DATASET_FILES) else "imagefolder"
    if p.suffix in FILE_FORMATS:
        if not p.is_file():
            raise FileNotFoundError(f"data source {path} does not exist")
        return FILE_FORMATS[p.suffix]
    if not p.exists():
        raise FileNotFoundError(f"data source {path} does not exist (nor is it hf:NAME or synthetic)")
    raise ValueError(f"{path}: unsupported data source (expected .jsonl, .parquet, .txt, a datasets save_to_disk "
                     "folder, an image folder, hf:NAME or synthetic)")


def _resolve(location: str, base_dir: str | os.PathLike | None) -> str:
    if base_dir is None or location.startswith(HF_PREFIX) or location == SYNTHETIC or Path(location).is_absolute():
        return location
    return str(Path(base_dir) / location)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _convert(cls: type, key: str, value: str, where: str):
    """A ``?key=value`` option -> the type of ``cls``'s field ``key``."""
    hints = typing.get_type_hints(cls)
    if key not in hints or key in ("path", "weight"):
        raise ValueError(f"{where}: unknown option {key!r} (options: "
                         f"{[f.name for f in dataclasses.fields(cls) if f.name not in ('path', 'weight')]})")
    kind = next(t for t in typing.get_args(hints[key]) or (hints[key],) if t is not type(None))
    if kind is bool:
        if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ValueError(f"{where}: option {key} takes true or false, got {value!r}")
        return value.lower() in ("1", "true", "yes")
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"{where}: option {key} takes a value of type {kind.__name__}, got {value!r}") from None
