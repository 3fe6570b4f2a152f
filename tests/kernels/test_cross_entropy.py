import pytest
import torch
import torch.nn.functional as F

from fusion.kernels import dispatch
from fusion.kernels.cross_entropy import chunk_size, linear_cross_entropy

from .conftest import close


def test_chunk_arithmetic():
    """16k tokens, d=4096, V=65,536: 16 chunks of 1,024 tokens, each chunk's logits as large as hidden."""
    assert chunk_size(16384, 65536, 4096) == 1024
    assert chunk_size(10, 50, 64) == 10  # vocab smaller than d: one chunk
    assert chunk_size(2048, 12288, 512) == 1024  # 24 chunks would hold 86 rows: at least 1,024
    assert chunk_size(600, 12288, 512) == 600    # fewer tokens than that: one chunk
    assert chunk_size(262144, 65536, 512) == 2048  # many tokens: the logits bound again


@pytest.mark.parametrize("use_triton", [False, True])
@pytest.mark.parametrize("dtype,chunk", [(torch.float32, 7), (torch.float16, None), (torch.bfloat16, 16)])
def test_values_and_grads_match_fp64(device, use_triton, dtype, chunk):
    torch.manual_seed(0)
    N, d, V = 37, 32, 1500  # V spans two vocab blocks of the Triton kernel
    hidden = torch.randn(N, d, device=device).to(dtype).requires_grad_()
    weight = (0.3 * torch.randn(V, d, device=device)).to(dtype).requires_grad_()
    targets = torch.randint(0, V, (N,), device=device)
    targets[[3, 20, 21]] = -100
    ce, lse = linear_cross_entropy(hidden, weight, targets, chunk=chunk, use_triton=use_triton)
    g_ce, g_lse = torch.randn(N, device=device), torch.randn(N, device=device)  # z-loss style: both used
    torch.autograd.backward([ce, lse], [g_ce, g_lse])

    h64, w64 = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    logits = h64 @ w64.t()
    valid = targets != -100
    ref_ce = F.cross_entropy(logits, targets, ignore_index=-100, reduction="none")
    ref_lse = torch.logsumexp(logits, -1) * valid
    torch.autograd.backward([ref_ce, ref_lse], [g_ce.double(), g_lse.double()])
    assert ce.dtype == lse.dtype == torch.float32
    assert (ce[~valid] == 0).all() and (lse[~valid] == 0).all()
    for actual, expected in ((ce, ref_ce), (lse, ref_lse), (hidden.grad, h64.grad), (weight.grad, w64.grad)):
        close(actual, expected, dtype)


def test_chunked_is_the_cpu_default_and_matches_eager():
    torch.manual_seed(1)
    hidden, weight = torch.randn(9, 16), torch.randn(40, 16)
    targets = torch.randint(0, 40, (9,))
    assert dispatch.backend_for("linear_cross_entropy", hidden.device) == "chunked"
    for got, want in zip(dispatch.linear_cross_entropy(hidden, weight, targets),
                         dispatch._linear_cross_entropy_eager(hidden, weight, targets, ignore_index=-100), strict=True):
        torch.testing.assert_close(got, want)


def test_only_one_output_used(device):
    hidden = torch.randn(5, 8, device=device, requires_grad=True)
    weight = torch.randn(12, 8, device=device, requires_grad=True)
    ce, _ = linear_cross_entropy(hidden, weight, torch.randint(0, 12, (5,), device=device))
    ce.sum().backward()
    ref = F.cross_entropy(hidden.detach() @ weight.detach().t(), torch.zeros(5, dtype=torch.long), reduction="sum")
    assert hidden.grad is not None and weight.grad is not None and ref.isfinite()


def test_bad_targets(device):
    with pytest.raises(ValueError, match="targets"):
        linear_cross_entropy(torch.randn(4, 8, device=device), torch.randn(6, 8, device=device),
                             torch.zeros(4, dtype=torch.int32, device=device))
