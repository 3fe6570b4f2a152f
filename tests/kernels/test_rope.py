import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from fusion.kernels import dispatch
from fusion.kernels.rope import rope

from .conftest import close


def tables(B, T, D, layout, device):
    """cos/sin in the given layout; 'random' is not of the cat(f, f) form, to check the exact transpose."""
    if layout == "random":
        return torch.randn(T, D, device=device), torch.randn(T, D, device=device)
    pos = torch.arange(T, device=device)[None] + torch.arange(B, device=device)[:, None] * 3  # per-row offsets
    freqs = pos[..., None].float() / (10000 ** (torch.arange(0, D, 2, device=device) / D))
    emb = torch.cat([freqs, freqs], -1)
    cos, sin = emb.cos(), emb.sin()
    return {"TD": (cos[0], sin[0]), "BTD": (cos, sin), "B1TD": (cos[:, None], sin[:, None])}[layout]


@pytest.mark.parametrize("layout,dtype", [("TD", torch.float32), ("BTD", torch.float16), ("B1TD", torch.float32),
                                          ("random", torch.float32), ("BTD", torch.bfloat16)])
def test_forward_backward_match_fp64(device, layout, dtype):
    torch.manual_seed(0)
    B, T, D = 2, 11, 24
    q = torch.randn(B, 4, T, D, device=device, dtype=dtype, requires_grad=True)
    k = torch.randn(B, 2, T, D, device=device, dtype=dtype, requires_grad=True)
    cos, sin = tables(B, T, D, layout, device)
    qr, kr = rope(q, k, cos.to(dtype), sin.to(dtype))
    gq, gk = torch.randn_like(qr), torch.randn_like(kr)
    torch.autograd.backward([qr, kr], [gq, gk])

    q64, k64 = q.detach().double().requires_grad_(), k.detach().double().requires_grad_()
    c64, s64 = cos.to(dtype).double(), sin.to(dtype).double()
    if c64.dim() == 2:
        c64, s64 = c64[None], s64[None]
    elif c64.dim() == 4:
        c64, s64 = c64[:, 0], s64[:, 0]
    rq, rk = apply_rotary_pos_emb(q64, k64, c64, s64)  # HF Llama, unsqueeze_dim=1
    torch.autograd.backward([rq, rk], [gq.double(), gk.double()])
    for actual, expected in ((qr, rq), (kr, rk), (q.grad, q64.grad), (k.grad, k64.grad)):
        close(actual, expected, dtype)


def test_dispatch_backends_agree(device):
    torch.manual_seed(1)
    q = torch.randn(1, 5, 2, 8, device=device).transpose(1, 2)  # the model's strided [B, H, T, D] view
    k = torch.randn(1, 1, 5, 8, device=device)
    cos, sin = tables(1, 5, 8, "B1TD", device)
    dispatch.set_backend("rope", "triton")
    try:
        got = dispatch.rope(q, k, cos, sin)
    finally:
        dispatch.set_backend("rope", None)
    for actual, expected in zip(got, dispatch.rope(q, k, cos, sin), strict=True):
        close(actual, expected, torch.float32)


def test_bad_table_shape(device):
    q = torch.randn(1, 2, 5, 8, device=device)
    with pytest.raises(ValueError, match="cos must be"):
        rope(q, q, torch.ones(6, 8, device=device), torch.ones(6, 8, device=device))
