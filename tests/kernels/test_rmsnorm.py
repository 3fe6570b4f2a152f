import pytest
import torch

from fusion.kernels import dispatch
from fusion.kernels.rmsnorm import rms_norm

from .conftest import close


@pytest.mark.parametrize("shape,dtype", [((3, 5, 40), torch.float32), ((7, 64), torch.float16),
                                         ((2, 3, 48), torch.bfloat16)])
def test_forward_backward_match_fp64(device, shape, dtype):
    torch.manual_seed(0)
    x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    w = (1 + 0.3 * torch.randn(shape[-1], device=device)).to(dtype).requires_grad_()
    y = rms_norm(x, w, 1e-5)
    g = torch.randn_like(y)
    y.backward(g)

    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-5) * w64
    ref.backward(g.double())
    assert y.dtype == dtype and y.shape == x.shape
    for actual, expected in ((y, ref), (x.grad, x64.grad), (w.grad, w64.grad)):
        close(actual, expected, dtype)


def test_matches_eager_dispatch_with_fp32_weight(device):
    """A bf16 input with an fp32 weight promotes to fp32 output like the eager op (equal up to one bf16 ulp)."""
    torch.manual_seed(1)
    x, w = torch.randn(4, 32, device=device, dtype=torch.bfloat16), torch.randn(32, device=device)
    out = rms_norm(x, w, 1e-6)
    expected = dispatch._rms_norm_eager(x, w, 1e-6)
    assert out.dtype == expected.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=1e-2, atol=1e-2)


def test_weight_shape_error(device):
    with pytest.raises(ValueError, match="weight"):
        rms_norm(torch.randn(2, 8, device=device), torch.ones(4, device=device))
