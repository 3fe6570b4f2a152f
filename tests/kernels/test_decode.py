import pytest
import torch

from fusion.kernels import dispatch
from fusion.kernels.decode import decode_attention

from .conftest import close


def reference(q, k_cache, v_cache, cache_seqlens):
    """fp64, row by row: query i of row b sits at position len_b - Tq + i and sees keys 0..its position."""
    B, Hq, Tq, D = q.shape
    rep = Hq // k_cache.shape[1]
    out = torch.zeros(B, Hq, Tq, D, dtype=torch.float64)
    for b in range(B):
        n = int(cache_seqlens[b])
        k = k_cache[b, :, :n].double().cpu().repeat_interleave(rep, 0)
        v = v_cache[b, :, :n].double().cpu().repeat_interleave(rep, 0)
        for i in range(Tq):
            pos = n - Tq + i
            s = q[b, :, i].double().cpu()[:, None, :] @ k[:, : pos + 1].transpose(-1, -2) * D ** -0.5
            out[b, :, i] = (s.softmax(-1) @ v[:, : pos + 1])[:, 0]
    return out


CASES = [  # B, Hq, Hkv, Tq, Tmax, D, seqlens, splits, dtype
    (3, 4, 2, 1, 260, 32, [260, 5, 150], 3, torch.float32),  # GQA, 3 cache slices, one empty for row 1
    (3, 4, 1, 3, 100, 24, [3, 77, 100], None, torch.float16),  # MQA, Tq=3, D off the block size
    (2, 2, 2, 3, 300, 16, [300, 131], 2, torch.bfloat16),
    (1, 8, 2, 1, 64, 64, [40], None, torch.float16),
]


@pytest.mark.parametrize("B,Hq,Hkv,Tq,Tmax,D,seqlens,splits,dtype", CASES)
def test_matches_fp64(device, B, Hq, Hkv, Tq, Tmax, D, seqlens, splits, dtype):
    torch.manual_seed(0)
    q = torch.randn(B, Hq, Tq, D, device=device, dtype=dtype)
    k = torch.randn(B, Hkv, Tmax, D, device=device, dtype=dtype)
    v = torch.randn(B, Hkv, Tmax, D, device=device, dtype=dtype)
    lens = torch.tensor(seqlens, device=device)
    out = decode_attention(q, k, v, lens, num_splits=splits)
    assert out.shape == q.shape and out.dtype == dtype
    close(out, reference(q, k, v, lens), dtype)


def test_dispatch_triton_matches_sdpa(device):
    torch.manual_seed(1)
    q = torch.randn(2, 4, 1, 16, device=device)
    k, v = torch.randn(2, 2, 40, 16, device=device), torch.randn(2, 2, 40, 16, device=device)
    lens = torch.tensor([40, 9], device=device)
    dispatch.set_backend("decode_attention", "triton")
    try:
        out = dispatch.decode_attention(q, k, v, lens)
    finally:
        dispatch.set_backend("decode_attention", None)
    close(out, dispatch.decode_attention(q, k, v, lens), torch.float32)


def test_refuses_autograd_and_bad_lengths(device):
    q, k = torch.randn(1, 2, 1, 16, device=device, requires_grad=True), torch.randn(1, 2, 8, 16, device=device)
    with pytest.raises(RuntimeError, match="no backward"):
        decode_attention(q, k, k, torch.tensor([8], device=device))
    with pytest.raises(ValueError, match="cache_seqlens"):
        decode_attention(q.detach(), k, k, torch.tensor([8.0], device=device))
