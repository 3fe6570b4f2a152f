"""Several tokenized sources as one training set, in proportion to their mixture weights, by document index.

A weight is a share of the training TOKENS of one epoch. No source is cut short: the epoch is sized so that the
source whose weight asks for the fewest repeats is read exactly once, and every other source is repeated (whole
copies, then a seeded random subset of its documents for the fraction), so the realised token shares are the
weights up to one document. Nothing is copied on disk: the mixture is an index into the sources' shards. Without
weights the sources are simply concatenated. Held-out documents are taken from each source before mixing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fusion.data.report import CORPUS_FILE
from fusion.data.shards import SHARD_GLOB, TokenDocs
from fusion.files import read_json, write_json

log = logging.getLogger(__name__)

MAX_EPOCH_GROWTH = 100  # a mixture epoch may hold at most this many times the sources' documents


def mix(docs: Sequence[TokenDocs], weights: Sequence[float] | None, names: Sequence[str], *,
        seed: int = 0) -> tuple[TokenDocs, list[dict]]:
    """(the mixture, one row per source: documents, tokens, token share and repeats as realised)."""
    whole = TokenDocs.concat(docs)
    starts = np.cumsum([0, *(len(d) for d in docs)])
    tokens = [int(d.lengths.sum()) for d in docs]
    if weights is None:
        picks = np.arange(len(whole))
    else:
        shares = [w / sum(weights) for w in weights]
        epoch = max(t / p for t, p in zip(tokens, shares, strict=True))  # tokens of one mixture epoch
        picks = np.concatenate([_repeat(d, p * epoch / t, np.random.default_rng([seed, s])) + starts[s]
                                for s, (d, p, t) in enumerate(zip(docs, shares, tokens, strict=True))])
    if len(picks) > MAX_EPOCH_GROWTH * len(whole):
        raise ValueError(f"the weights {list(weights)} repeat a small source {len(picks) / len(whole):.0f}x per "
                         f"epoch (over {MAX_EPOCH_GROWTH}x the corpus); lower its weight or add data")
    mixed = whole.subset(picks)
    counts = np.bincount(np.searchsorted(starts, picks, side="right") - 1, minlength=len(docs))
    got = [int(whole.lengths[picks[(picks >= starts[s]) & (picks < starts[s + 1])]].sum()) for s in range(len(docs))]
    total = max(sum(got), 1)
    rows = [{"source": names[s], "weight": None if weights is None else weights[s], "documents": int(counts[s]),
             "tokens": got[s], "token_share": got[s] / total, "repeats": got[s] / max(tokens[s], 1)}
            for s in range(len(docs))]
    return mixed, rows


def _repeat(docs: TokenDocs, times: float, rng: np.random.Generator) -> np.ndarray:
    """Document picks holding ``times`` x the tokens of ``docs``: whole copies, then a random subset for the rest."""
    n, full = len(docs), int(times)
    order = rng.permutation(n)
    cum = np.cumsum(docs.lengths[order])
    want = (times - full) * cum[-1]
    k = int(np.searchsorted(cum, want))  # cum[k-1] < want <= cum[k]: take the closer of k and k + 1 documents
    k = k + 1 if k < n and cum[k] - want < want - (cum[k - 1] if k else 0) else k
    return np.concatenate([np.tile(np.arange(n), full), order[:k]])


def load_sources(folder: str | os.PathLike) -> tuple[list[TokenDocs], list[float] | None, list[str]]:
    """The per-source token documents of a tokenized corpus (``corpus.json``), their weights and names; a plain
    folder of ``shard_NNNNN`` folders is one source."""
    folder = Path(folder)
    if not (folder / CORPUS_FILE).is_file():
        return [TokenDocs.from_dir(folder)], None, [folder.name]
    corpus = read_json(folder / CORPUS_FILE)
    records = corpus["sources"]
    weights = [r["source"]["weight"] for r in records]
    docs = [TokenDocs.from_dir(folder / r["folder"]) for r in records]
    return docs, None if weights[0] is None else weights, [r["source"]["path"] for r in records]


def training_docs(folder: str | os.PathLike, eval_fraction: float, *,
                  seed: int = 0) -> tuple[TokenDocs, TokenDocs, list[dict]]:
    """(train mixture, held-out documents, the realised proportions) of a tokenized corpus; ``eval_fraction`` of
    each source is held out before mixing."""
    docs, weights, names = load_sources(folder)
    pairs = [d.split(eval_fraction) for d in docs]
    train, shares = mix([p[0] for p in pairs], weights, names, seed=seed)
    return train, TokenDocs.concat([p[1] for p in pairs]), shares


def record_mixture(folder: str | os.PathLike, shares: list[dict]) -> None:
    """Add the realised mixture to a tokenized corpus's ``corpus.json`` (the run's data metadata)."""
    path = Path(folder) / CORPUS_FILE
    if path.is_file():
        write_json(path, {**read_json(path), "mixture": shares})


def is_tokenized(folder: str | os.PathLike) -> bool:
    """A tokenized corpus folder, or a folder of token shards."""
    folder = Path(folder)
    return folder.is_dir() and ((folder / CORPUS_FILE).is_file() or any(folder.glob(SHARD_GLOB)))
