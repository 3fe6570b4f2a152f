import pytest
import torch

from fusion.data.shards import TokenDocs
from fusion.data.synthetic import SyntheticWorld
from fusion.model.config import ModelConfig
from fusion.model.transformer import Transformer
from fusion.tokenizers.image import ImageTokenizer
from fusion.tokenizers.mixed import MixedTokenizer
from fusion.tokenizers.text import TextTokenizer
from fusion.tokenizers.vq_config import VQConfig


@pytest.fixture(scope="session")
def tokenizer() -> MixedTokenizer:
    """Real tokenizers at toy size: a 300-piece BPE and an untrained tiny VQ (8x8 = 64 codes a 32x32 image)."""
    torch.manual_seed(0)
    text = TextTokenizer.train(SyntheticWorld(0).texts(300), 300)
    return MixedTokenizer(text, ImageTokenizer(VQConfig.preset("tiny")).eval())


def make_model(tokenizer: MixedTokenizer, seed: int = 0, **overrides) -> Transformer:
    """A 2-layer dim-64 decoder over the tokenizer's vocabulary."""
    cfg = ModelConfig(vocab=tokenizer.vocab, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                      max_seq_len=256, **overrides)
    torch.manual_seed(seed)
    return Transformer(cfg)


def make_tied_model(tokenizer: MixedTokenizer, seed: int = 0, **overrides) -> Transformer:
    """The ``tiny`` preset as users get it (tied embeddings, GQA), shrunk to dim 64 / 2 layers."""
    cfg = ModelConfig.preset("tiny", tokenizer.vocab, **{**dict(dim=64, n_layers=2, ffn_dim=128, max_seq_len=256),
                                                          **overrides})
    assert cfg.tie_embeddings and cfg.n_kv_heads < cfg.n_heads
    torch.manual_seed(seed)
    return Transformer(cfg)


@pytest.fixture(scope="session")
def docs(tokenizer) -> TokenDocs:
    """60 tokenized synthetic documents."""
    return TokenDocs.from_arrays(tokenizer.encode_batch(list(SyntheticWorld(seed=1).documents(60))))
