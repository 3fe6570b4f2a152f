"""Registering an op or a backend is one decorator: dispatch then routes to it when asked, chooses it by device
when it can run, skips it when it cannot, and sends a kernel that cannot build to the op's portable backend."""

import logging

import pytest
import torch

from fusion.kernels import dispatch, fallback, overrides, registry
from fusion.kernels.registry import ANY_DEVICE

CPU = torch.device("cpu")


class ToyBuildError(RuntimeError):
    """What a toy kernel raises when it 'cannot build' here."""


def softcap_ref(x: torch.Tensor, cap: float) -> torch.Tensor:
    """The toy op's contract, in fp64: cap * tanh(x / cap)."""
    return cap * torch.tanh(x.double() / cap)


@pytest.fixture
def table(monkeypatch):
    """``register`` that undoes itself: each backend it adds is removed after the test, overrides with it."""
    monkeypatch.setattr(overrides, "_overrides", {})
    monkeypatch.setattr(fallback, "failed", {})
    monkeypatch.delenv("FUSION_KERNELS", raising=False)
    monkeypatch.delenv("FUSION_STRICT_KERNELS", raising=False)
    overrides._env = None
    added: list[tuple[str, str]] = []

    def register(op, backend, **kw):
        def add(fn):
            registry.register(op, backend, **kw)(fn)
            added.append((op, backend))
            return fn
        return add

    yield register
    overrides._overrides.clear()
    for op, backend in reversed(added):
        if op in registry.ops() and backend in registry.backends(op):  # a test may have removed it already
            registry.unregister(op, backend)
    overrides._env = None


def _softcap_backends(register, ran):
    """A new op: its portable torch backend and a second formula of the same contract."""
    @register("softcap", "torch", default_on=ANY_DEVICE)
    def _torch(x, cap):
        ran.append("torch")
        return cap * torch.tanh(x / cap)

    @register("softcap", "exp")
    def _exp(x, cap):
        ran.append("exp")
        e = torch.exp(-2 * (x / cap).abs())
        return cap * torch.sign(x) * (1 - e) / (1 + e)


def test_a_new_op_and_backend_are_routed_to_when_asked_and_removed_cleanly(table, monkeypatch):
    ran = []
    _softcap_backends(table, ran)
    x = torch.randn(4, 33, generator=torch.Generator().manual_seed(0)) * 5
    want = softcap_ref(x, 3.0)
    torch.testing.assert_close(dispatch.function_for("softcap", CPU)(x, 3.0).double(), want)
    assert ran == ["torch"]  # the portable backend is the default
    dispatch.set_backend("softcap", "exp")
    assert dispatch.backend_for("softcap", CPU) == "exp"
    torch.testing.assert_close(dispatch.function_for("softcap", CPU)(x, 3.0).double(), want)
    assert ran == ["torch", "exp"]
    dispatch.set_backend("softcap", None)
    monkeypatch.setenv("FUSION_KERNELS", "softcap=exp")  # the env var knows a registered op too
    dispatch.set_backend("softcap", None)
    torch.testing.assert_close(dispatch.function_for("softcap", CPU)(x, 3.0).double(), want)
    assert ran == ["torch", "exp", "exp"]
    monkeypatch.delenv("FUSION_KERNELS")
    dispatch.set_backend("softcap", None)
    registry.unregister("softcap", "exp")
    with pytest.raises(ValueError, match="'exp' is not available for softcap: no backend of that name"):
        dispatch.set_backend("softcap", "exp")


def test_a_new_backend_of_a_built_in_op_serves_its_public_call_site(table):
    ran = []

    @table("rms_norm", "fp64")
    def _rms_norm_fp64(x, weight, eps):
        ran.append(x.shape)
        xd = x.double()
        return (xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + eps) * weight.double()).to(x.dtype)

    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(3, 16, generator=g), torch.randn(16, generator=g)
    want = x.double() / (x.double().pow(2).mean(-1, keepdim=True) + 1e-5).sqrt() * w.double()
    dispatch.set_backend("rms_norm", "fp64")
    torch.testing.assert_close(dispatch.rms_norm(x, w).double(), want, rtol=1e-6, atol=1e-6)
    assert ran == [x.shape]
    dispatch.set_backend("rms_norm", None)
    torch.testing.assert_close(dispatch.rms_norm(x, w).double(), want, rtol=1e-5, atol=1e-5)
    assert ran == [x.shape] and dispatch.backend_for("rms_norm", CPU) == "eager"


def test_an_unavailable_backend_is_skipped_by_the_default_and_refused_when_asked(table, monkeypatch):
    @table("rms_norm", "vendor", available=False, default_on=("cpu",))
    def _vendor(x, weight, eps):
        raise AssertionError("an unavailable backend never runs")

    x, w = torch.randn(2, 8), torch.randn(8)
    want = x.double() / (x.double().pow(2).mean(-1, keepdim=True) + 1e-5).sqrt() * w.double()
    assert dispatch.backend_for("rms_norm", CPU) == "eager"
    torch.testing.assert_close(dispatch.rms_norm(x, w).double(), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="'vendor' is not available for rms_norm: it is registered but cannot run"):
        dispatch.set_backend("rms_norm", "vendor")
    monkeypatch.setenv("FUSION_KERNELS", "rms_norm=vendor")
    dispatch.set_backend("attention", None)
    with pytest.raises(ValueError, match="cannot run on this machine; available here: \\['eager'"):
        dispatch.rms_norm(x, w)


def _broken_kernel_op(register, ran):
    """softcap with a kernel that is the CPU default but cannot build here."""
    @register("softcap", "torch", default_on=ANY_DEVICE)
    def _torch(x, cap):
        ran.append("torch")
        return cap * torch.tanh(x / cap)

    @register("softcap", "fused", default_on=("cpu",), build_errors=lambda: (ToyBuildError,))
    def _fused(x, cap):
        ran.append("fused")
        raise ToyBuildError("too much shared memory\nptxas: out of resources")


def test_a_kernel_that_cannot_build_falls_back_to_the_portable_backend_once_loudly(table, caplog):
    ran = []
    _broken_kernel_op(table, ran)
    x = torch.randn(5, 7) * 4
    assert dispatch.backend_for("softcap", CPU) == "fused"  # the device default: chosen, then it fails
    with caplog.at_level(logging.WARNING, logger="fusion.kernels.dispatch"):
        outs = [dispatch.function_for("softcap", CPU)(x, 2.0) for _ in range(3)]
    for out in outs:
        torch.testing.assert_close(out.double(), softcap_ref(x, 2.0))
    assert ran == ["fused", "torch", "torch", "torch"]  # tried once, then the fallback for good
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "the fused softcap kernel failed to build" in warnings[0]
    assert "ToyBuildError: ptxas: out of resources" in warnings[0] and "FUSION_KERNELS=softcap=torch" in warnings[0]
    assert fallback.failed == {"softcap": "ToyBuildError: ptxas: out of resources"}


def test_strict_mode_makes_a_kernel_that_cannot_build_an_error(table, monkeypatch):
    ran = []
    _broken_kernel_op(table, ran)
    monkeypatch.setenv("FUSION_STRICT_KERNELS", "1")
    with pytest.raises(ToyBuildError):
        dispatch.function_for("softcap", CPU)(torch.ones(3), 2.0)
    assert ran == ["fused"] and not fallback.failed


def test_registration_conflicts_are_errors_and_change_nothing(table):
    before = {op: dict(registry.backends(op)) for op in registry.ops()}
    with pytest.raises(ValueError, match="'eager' is already the default on '\\*'"):
        table("rms_norm", "other", default_on=ANY_DEVICE)(lambda x, w, eps: x)
    with pytest.raises(ValueError, match="backend 'sdpa' is already registered"):
        table("attention", "sdpa")(lambda *a, **k: None)
    with pytest.raises(ValueError, match="only one backend per op may have build_errors"):
        table("rope", "cuda_graphs", build_errors=lambda: (ToyBuildError,))(lambda *a: None)
    assert {op: dict(registry.backends(op)) for op in registry.ops()} == before
    with pytest.raises(ValueError, match="unknown op 'softcap'"):
        dispatch.function_for("softcap", CPU)
