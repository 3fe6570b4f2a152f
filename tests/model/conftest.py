import pytest
import torch

from fusion.model.config import ModelConfig
from fusion.model.transformer import Transformer
from fusion.vocab import Vocab


def make_model(seed: int = 0, **overrides) -> Transformer:
    """A 2-layer dim-64 GQA model with random (not default) norm weights so every parameter matters."""
    shape = dict(vocab=Vocab.build(40, 24), dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, max_seq_len=64)
    cfg = ModelConfig(**{**shape, **overrides})
    torch.manual_seed(seed)
    model = Transformer(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    return model.eval()


@pytest.fixture
def model() -> Transformer:
    return make_model()
