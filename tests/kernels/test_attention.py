import pytest
import torch

from fusion.kernels import dispatch
from fusion.kernels.attention import flash_attention

from .conftest import close


def reference(q, k, v, causal, doc_ids, scale=None):
    """fp64 softmax attention with an explicit mask built from the definition."""
    q, k, v = q.double(), k.double(), v.double()
    B, H, T, D = q.shape
    rep = H // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    allowed = torch.ones(B, 1, T, T, dtype=torch.bool)
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    if causal:
        allowed &= j <= i
    if doc_ids is not None:
        allowed &= (doc_ids.cpu()[:, :, None] == doc_ids.cpu()[:, None, :])[:, None]
    s = (q @ k.transpose(-1, -2)) * (scale if scale is not None else D ** -0.5)
    return s.masked_fill(~allowed.to(q.device), float("-inf")).softmax(-1) @ v


def packed(B, T, lengths, device):
    """doc_ids of documents with the given lengths, packed left to right (the last one fills the row)."""
    rows = []
    for b in range(B):
        ids = torch.cat([torch.full((n,), d + 10 * b) for d, n in enumerate(lengths)])
        rows.append(torch.cat([ids, torch.full((T - len(ids),), 99)])[:T])
    return torch.stack(rows).to(device)


CASES = [  # B, Hq, Hkv, T, D, causal, doc lengths, dtype
    (2, 4, 2, 50, 24, True, [20, 7], torch.float32),   # GQA, ragged docs, T and D off the block size
    (1, 2, 2, 64, 32, False, None, torch.float32),     # MHA, full
    (2, 4, 1, 45, 16, False, [9, 30], torch.float16),  # MQA, full attention inside documents
    (1, 2, 1, 128, 64, True, [5, 40, 3, 33], torch.float16),  # many docs: tiles before a doc are skipped
    (1, 2, 1, 40, 64, True, None, torch.bfloat16),
]


@pytest.mark.parametrize("B,Hq,Hkv,T,D,causal,docs,dtype", CASES)
def test_forward_backward_match_fp64(device, B, Hq, Hkv, T, D, causal, docs, dtype):
    torch.manual_seed(0)
    q = torch.randn(B, Hq, T, D, device=device, dtype=dtype, requires_grad=True)
    k = torch.randn(B, Hkv, T, D, device=device, dtype=dtype, requires_grad=True)
    v = torch.randn(B, Hkv, T, D, device=device, dtype=dtype, requires_grad=True)
    doc_ids = None if docs is None else packed(B, T, docs, device)
    out = flash_attention(q, k, v, causal=causal, doc_ids=doc_ids)
    grad = torch.randn_like(out)
    out.backward(grad)

    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = reference(q64, k64, v64, causal, doc_ids)
    ref.backward(grad.double())
    assert out.dtype == dtype and out.shape == q.shape
    for actual, expected in ((out, ref), (q.grad, q64.grad), (k.grad, k64.grad), (v.grad, v64.grad)):
        close(actual, expected, dtype)


def test_strided_inputs_and_scale(device):
    """q/k/v as transposed views of [B, T, H, D] (what the model passes) and a custom softmax scale."""
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 33, h, 16, device=device).transpose(1, 2) for h in (4, 2, 2))
    close(flash_attention(q, k, v, causal=True, scale=0.3), reference(q, k, v, True, None, scale=0.3),
          torch.float32)


def test_dispatch_selects_triton(device):
    torch.manual_seed(2)
    q, k, v = torch.randn(1, 2, 20, 16, device=device), torch.randn(1, 1, 20, 16, device=device), \
        torch.randn(1, 1, 20, 16, device=device)
    dispatch.set_backend("attention", "triton")
    try:
        out = dispatch.attention(q, k, v, causal=True, doc_ids=packed(1, 20, [6], device))
    finally:
        dispatch.set_backend("attention", None)
    expected = dispatch.attention(q, k, v, causal=True, doc_ids=packed(1, 20, [6], device))
    close(out, expected, torch.float32)


def test_bad_input_names_the_problem(device):
    q, k = torch.randn(1, 3, 8, 16, device=device), torch.randn(1, 2, 8, 16, device=device)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        flash_attention(q, k, k)
    with pytest.raises(ValueError, match="doc_ids"):
        flash_attention(k, k, k, doc_ids=torch.zeros(1, 7, dtype=torch.long, device=device))
