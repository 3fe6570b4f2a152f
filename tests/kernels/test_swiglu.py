import pytest
import torch
import torch.nn.functional as F

from fusion.kernels.swiglu import swiglu

from .conftest import close


@pytest.mark.parametrize("shape,dtype", [((3, 7, 50), torch.float32), ((1500,), torch.float16),
                                         ((4, 96), torch.bfloat16)])
def test_forward_backward_match_fp64(device, shape, dtype):
    torch.manual_seed(0)
    gate = (2 * torch.randn(shape, device=device)).to(dtype).requires_grad_()
    up = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    y = swiglu(gate, up)
    g = torch.randn_like(y)
    y.backward(g)
    g64, u64 = gate.detach().double().requires_grad_(), up.detach().double().requires_grad_()
    ref = F.silu(g64) * u64
    ref.backward(g.double())
    for actual, expected in ((y, ref), (gate.grad, g64.grad), (up.grad, u64.grad)):
        close(actual, expected, dtype)


def test_shape_mismatch(device):
    with pytest.raises(ValueError, match="gate and up"):
        swiglu(torch.randn(2, 4, device=device), torch.randn(2, 5, device=device))
