"""Kernel tests run Triton natively on a GPU, else in its CPU interpreter (chosen in tests/conftest.py)."""

import pytest
import torch

# Forward / backward tolerances against fp64 references, per input dtype.
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 6e-2}


@pytest.fixture
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    """Max abs error, relative to the reference's scale, within the dtype's tolerance."""
    err = (actual.double() - expected.double()).abs().max().item()
    scale = max(1.0, expected.abs().max().item())
    assert err <= TOL[dtype] * scale, f"max error {err:.3g} > {TOL[dtype] * scale:.3g}"
