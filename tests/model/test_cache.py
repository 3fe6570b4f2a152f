import pytest
import torch

from fusion.model.cache import KVCache

from .conftest import make_model


@pytest.fixture
def cfg():
    return make_model().cfg


def test_allocate_shapes_and_validation(cfg):
    cache = KVCache.allocate(cfg, batch=3, max_len=20)
    assert len(cache.k) == len(cache.v) == cfg.n_layers
    assert cache.k[0].shape == (3, cfg.n_kv_heads, 21, cfg.head_dim)  # + 1 scratch slot
    assert (cache.batch, cache.max_len) == (3, 20)
    assert cache.seqlens.tolist() == [0, 0, 0] and cache.seqlens.dtype == torch.long
    with pytest.raises(ValueError, match="max_seq_len"):
        KVCache.allocate(cfg, 1, cfg.max_seq_len + 1)
    with pytest.raises(ValueError, match="positive"):
        KVCache.allocate(cfg, 0, 8)


def test_write_goes_to_each_rows_length_and_overflow_to_scratch(cfg):
    cache = KVCache.allocate(cfg, batch=2, max_len=4)
    cache.seqlens.copy_(torch.tensor([1, 3]))
    k = torch.randn(2, cfg.n_kv_heads, 2, cfg.head_dim)
    slots = cache.slots(2)
    assert slots.tolist() == [[1, 2], [3, 4]]  # row 1's second token lands in the scratch slot 4
    cache.write(0, k, -k, slots)
    torch.testing.assert_close(cache.k[0][0, :, 1:3], k[0], rtol=0, atol=0)
    torch.testing.assert_close(cache.k[0][1, :, 3], k[1, :, 0], rtol=0, atol=0)
    torch.testing.assert_close(cache.v[0][1, :, 3], -k[1, :, 0], rtol=0, atol=0)
    assert cache.k[0][0, :, 0].abs().sum() == 0 and cache.k[0][0, :, 3].abs().sum() == 0
    cache.advance(torch.tensor([2, 1]))
    assert cache.seqlens.tolist() == [3, 4]
    address = cache.seqlens.data_ptr()
    cache.reset()
    assert cache.seqlens.tolist() == [0, 0] and cache.seqlens.data_ptr() == address


def test_prefill_then_token_by_token_equals_full_recompute():
    model = make_model(swin_norm=True)
    torch.manual_seed(3)
    seq = torch.randint(0, model.cfg.vocab.size, (2, 14))
    cache = KVCache.allocate(model.cfg, batch=2, max_len=16)
    with torch.no_grad():
        full = model(seq)
        steps = [model(seq[:, :6], cache=cache)] + [model(seq[:, t:t + 1], cache=cache) for t in range(6, 14)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    assert cache.seqlens.tolist() == [14, 14]


def test_ragged_prefill_and_decode_equal_each_row_alone(model):
    V = model.cfg.vocab.size
    torch.manual_seed(4)
    prompts = [torch.randint(0, V, (5,)), torch.randint(0, V, (9,))]
    continuations = torch.randint(0, V, (2, 4))  # the tokens each row "generates"
    lengths = torch.tensor([5, 9])
    padded = torch.full((2, 9), model.cfg.vocab.pad_id)
    for b, p in enumerate(prompts):
        padded[b, :len(p)] = p
    cache = KVCache.allocate(model.cfg, batch=2, max_len=16)
    with torch.no_grad():
        prefill = model(padded, cache=cache, lengths=lengths)
        decoded = [model(continuations[:, t:t + 1], cache=cache) for t in range(4)]
        for b, p in enumerate(prompts):
            full = model(torch.cat([p, continuations[b]])[None])[0]
            n = len(p)
            torch.testing.assert_close(prefill[b, :n], full[:n], atol=1e-5, rtol=1e-5)
            for t in range(4):
                torch.testing.assert_close(decoded[t][b, 0], full[n + t], atol=1e-5, rtol=1e-5)
    assert cache.seqlens.tolist() == [9, 13]


def test_select_reorders_rows(model):
    V = model.cfg.vocab.size
    seq = torch.randint(0, V, (2, 6))
    cache = KVCache.allocate(model.cfg, batch=2, max_len=8)
    with torch.no_grad():
        model(seq[:, :5], cache=cache)
        swapped = cache.select(torch.tensor([1, 0]))
        want = model(seq[:, 5:], cache=cache)
        got = model(seq.flip(0)[:, 5:], cache=swapped)
    torch.testing.assert_close(got, want.flip(0), atol=1e-6, rtol=1e-6)


def test_cache_misuse_raises(model):
    cache = KVCache.allocate(model.cfg, batch=2, max_len=4)
    with pytest.raises(ValueError, match="rows"):
        model(torch.zeros(3, 1, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="max_len"):
        model(torch.zeros(2, 5, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="doc_ids"):
        model(torch.zeros(2, 1, dtype=torch.long), cache=cache, doc_ids=torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="lengths"):
        model(torch.zeros(2, 1, dtype=torch.long), lengths=torch.ones(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"lengths must be \[B\]"):
        model(torch.zeros(2, 1, dtype=torch.long), cache=cache, lengths=torch.ones(3, dtype=torch.long))
