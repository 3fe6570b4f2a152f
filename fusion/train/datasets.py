"""The training and evaluation datasets a ``TrainConfig`` asks for, built in one place for the CLI, the demo and
the tests: the same packing, padding, condition dropout and rank slice everywhere."""

from __future__ import annotations

from fusion.data.shards import TokenDocs
from fusion.train.config import TrainConfig
from fusion.train.distributed import DistInfo, current_dist
from fusion.train.packing import ConditionDropout, PackedDataset
from fusion.vocab import Vocab


def training_datasets(cfg: TrainConfig, vocab: Vocab, train_docs: TokenDocs, eval_docs: TokenDocs | None = None,
                      info: DistInfo | None = None) -> tuple[PackedDataset, PackedDataset | None]:
    """(train, eval) packed as ``cfg`` says, sliced for this rank; eval is None without eval documents.

    Only the training set drops captions (``cfg.condition_dropout``); eval keeps every document and its last,
    partial batch, so held-out losses always see the same tokens.
    """
    info = info or current_dist()
    common = dict(seq_len=cfg.seq_len, batch_size=cfg.batch_size, pad_id=vocab.pad_id, seed=cfg.seed,
                  rank=info.rank, world_size=info.world_size, whole_documents=cfg.whole_documents)
    dropout = ConditionDropout(cfg.condition_dropout, vocab.bos_id, vocab.boi_id)
    train = PackedDataset(train_docs, condition_dropout=dropout, **common)
    held = PackedDataset(eval_docs, drop_last=False, **common) if eval_docs is not None and len(eval_docs) else None
    return train, held
