import pytest
import torch

from fusion.api import Fusion
from fusion.data.synthetic import SyntheticWorld
from fusion.model.config import ModelConfig
from fusion.model.transformer import Transformer
from fusion.tokenizers.image import ImageTokenizer
from fusion.tokenizers.mixed import MixedTokenizer
from fusion.tokenizers.text import TextTokenizer
from fusion.tokenizers.vq_config import VQConfig


def test_checkpoint_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    world = SyntheticWorld(seed=1)
    tok = MixedTokenizer(TextTokenizer.train(world.texts(300), 300), ImageTokenizer(VQConfig.preset("tiny")).eval())
    model = Transformer(ModelConfig.preset("tiny", tok.vocab, n_layers=2)).eval()
    Fusion(model, tok).save_pretrained(tmp_path / "ckpt")
    assert {"config.json", "model.safetensors", "text.model", "vq.safetensors", "vq.json"} <= {
        p.name for p in (tmp_path / "ckpt").iterdir()}

    loaded = Fusion.from_pretrained(tmp_path / "ckpt", device="cpu")
    model2, tok2 = loaded.model, loaded.tokenizer
    docs = list(world.documents(4, seed_offset=1))
    ids = tok.encode_batch(docs)
    assert all(torch.equal(a, b) for a, b in zip(ids, tok2.encode_batch(docs), strict=True))
    x = ids[0][None]
    with torch.no_grad():
        assert torch.equal(model(x), model2(x))
    codes = ids[0][tok.vocab.image_id_mask(ids[0])].view(-1, tok.tokens_per_image) - tok.vocab.image_start
    assert torch.equal(tok.image.decode(codes), tok2.image.decode(codes))


def test_missing_pieces_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        Fusion.from_pretrained(tmp_path)
