"""Decoding in bf16 follows fp32: teacher-forced on fp32's greedy sequence, mean KL(fp32 || bf16) <= 1e-4 and the
same top-1 wherever fp32's top-1 leads its top-2 by >= 0.05 (a random model's greedy ids diverge between the two
at an arbitrary token, so token equality is not the test). Checked through the full forward and through the KV
cache one token at a time, as generation runs; and ``dtype="auto"`` loads in the dtype ``cpu_tune`` chooses."""

import copy

import pytest
import torch

from fusion.api import Fusion
from fusion.inference.generate import generate_ids
from fusion.kernels import cpu_tune
from fusion.model.cache import KVCache
from fusion.model.config import ModelConfig
from fusion.model.transformer import Transformer
from fusion.numerics import Agreement
from fusion.vocab import Vocab

VOCAB = Vocab.build(300, 256)


@pytest.fixture(scope="module")
def model_and_sequence():
    """The default preset's shape (tied embeddings) with a final norm scaled up, so that its next-token
    distributions are peaked and many positions are decisive (a plain random init is near uniform); and fp32's
    greedy mixed-mode sequence from a short prompt."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny", VOCAB)).eval()
    assert model.cfg.tie_embeddings
    with torch.no_grad():
        model.norm.weight.mul_(4)
    prompt = torch.tensor([VOCAB.bos_id, 10, 11, 12, VOCAB.boi_id])  # an image of 64 codes, then text
    ids = generate_ids(model, [prompt], max_new_tokens=120, tokens_per_image=64, mode="mixed", do_sample=False)[0]
    seq = torch.cat([prompt, ids])[None]
    assert seq.shape[1] > 100 and VOCAB.eoi_id in seq.tolist()[0]
    return model, seq


def _check(agreement: Agreement) -> None:
    assert agreement.decisive >= 50, agreement  # the top-1 rule must have positions to judge
    assert agreement.ok, agreement


@torch.no_grad()
def test_bf16_forward_follows_fp32(model_and_sequence):
    model, seq = model_and_sequence
    _check(Agreement.of(model(seq), copy.deepcopy(model).bfloat16()(seq).float()))


@torch.no_grad()
def test_bf16_cached_decoding_follows_fp32(model_and_sequence):
    model, seq = model_and_sequence
    bf16 = copy.deepcopy(model).bfloat16()
    cache = KVCache.allocate(bf16.cfg, 1, seq.shape[1], dtype=torch.bfloat16)
    assert cache.k[0].dtype == torch.bfloat16
    got = [bf16.next_logits(seq[:, :5], cache)]
    got += [bf16.next_logits(seq[:, t:t + 1], cache) for t in range(5, seq.shape[1])]
    _check(Agreement.of(model(seq)[0, 4:], torch.cat(got)))


def test_the_rule_rejects_a_real_loss_of_precision(model_and_sequence):
    """The same check fails for logits off by up to +-0.125: the bar can be missed."""
    model, seq = model_and_sequence
    ref = model(seq).detach()
    coarse = ref + (torch.rand(ref.shape, generator=torch.Generator().manual_seed(0)) - 0.5) * 0.25
    assert not Agreement.of(ref, coarse).ok


@pytest.mark.parametrize("auto", [torch.float32, torch.bfloat16])
def test_load_with_dtype_auto_decodes_in_the_chosen_dtype(tokenizer, tmp_path, monkeypatch, auto):
    from .conftest import make_model

    Fusion(make_model(tokenizer.vocab, seed=0), tokenizer).save_pretrained(tmp_path)
    assert next(Fusion.from_pretrained(tmp_path, device="cpu").model.parameters()).dtype == torch.float32
    monkeypatch.setattr(cpu_tune, "auto_dtype", lambda device: auto)
    loaded = Fusion.from_pretrained(tmp_path, device="cpu", dtype="auto")
    assert {p.dtype for p in loaded.model.parameters()} == {auto}
    doc = loaded.generate("a red", mode="image", seed=0)
    assert len(doc.images) == 1
    with pytest.raises(ValueError, match="'auto'"):
        Fusion.from_pretrained(tmp_path, device="cpu", dtype="bf16")
