"""Each training-config rule is checked where the config is made: a bad value fails at ``TrainConfig(...)``,
naming the field, before any data, model or process group exists."""

import pytest

from fusion.train.config import TrainConfig
from fusion.train.datasets import training_datasets


@pytest.mark.parametrize("field, value", [("condition_dropout", 1.0), ("condition_dropout", -0.1),
                                          ("parallel", "zero3"), ("dtype", "fp16"), ("seq_len", 0)])
def test_a_bad_value_fails_where_the_config_is_made(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def _sequences_per_document(ds) -> list[int]:
    """How many sequences of epoch 0 each document's tokens land in."""
    seen: dict[int, set[int]] = {}
    for i in range(ds.sequences_in(0)):
        for d in set(ds.sequence(0, i)[1].tolist()) - {-1}:
            seen.setdefault(d, set()).add(i)
    return [len(s) for s in seen.values()]


def test_the_dataset_factory_follows_the_config(tokenizer, docs):
    train_docs, eval_docs = docs.split(0.2)
    longest = max(len(d) for d in train_docs)
    cfg = TrainConfig(steps=4, warmup=1, batch_size=3, seq_len=longest, seed=3, condition_dropout=0.5,
                      whole_documents=True)
    train, held = training_datasets(cfg, tokenizer.vocab, train_docs, eval_docs)
    assert (train.seq_len, train.batch_size, train.seed, train.rank, train.world_size) == (longest, 3, 3, 0, 1)
    assert train.state_dict()["condition_dropout"] == 0.5 and held.state_dict()["condition_dropout"] == 0.0
    assert held.batches_in(0) == -(-held.sequences_in(0) // 3)  # eval keeps its last, partial batch
    assert max(_sequences_per_document(train)) == 1  # whole documents: none straddles two sequences
    cut, _ = training_datasets(TrainConfig(steps=4, warmup=1, batch_size=3, seq_len=longest), tokenizer.vocab,
                               train_docs)
    assert max(_sequences_per_document(cut)) > 1  # the check above can fail: cut packing straddles
    assert training_datasets(cfg, tokenizer.vocab, train_docs)[1] is None
