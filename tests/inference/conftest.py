import pytest
import torch

from fusion.data.synthetic import SyntheticWorld
from fusion.model.transformer import Transformer
from fusion.tokenizers.image import ImageTokenizer
from fusion.tokenizers.mixed import MixedTokenizer
from fusion.tokenizers.text import TextTokenizer
from fusion.tokenizers.vq_config import VQConfig

from ..model.conftest import make_model as _make_model


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny ops on a loaded 2-core box are ~1000x slower with intra-op threads fighting each other."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tokenizer() -> MixedTokenizer:
    torch.manual_seed(0)
    text = TextTokenizer.train(SyntheticWorld(0).texts(300), 300)
    return MixedTokenizer(text, ImageTokenizer(VQConfig.preset("tiny")).eval())


def make_model(vocab, seed: int = 0, max_seq_len: int = 256) -> Transformer:
    """The model tests' tiny GQA model with randomised norms, over ``vocab``."""
    return _make_model(seed, vocab=vocab, max_seq_len=max_seq_len)


def bias_logits(model: Transformer, ids, value: float):
    """Add ``value`` to the logits of ``ids`` (a forward hook on the LM head); returns the hook handle."""
    bias = torch.zeros(model.cfg.vocab.size)
    bias[ids] = value
    return model.lm_head.register_forward_hook(lambda mod, inp, out: out + bias.to(out.dtype))
