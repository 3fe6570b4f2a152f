"""The backend each op was asked for: ``set_backend`` first, then the ``FUSION_KERNELS`` env var
(``"attention=sdpa,rms_norm=eager"``), read once and again after each ``set_backend``. ``dispatch`` adds the
measured CPU choice and the device default behind them."""

from __future__ import annotations

import os

OPS = ("attention", "decode_attention", "rms_norm", "swiglu", "linear_cross_entropy", "rope")
_overrides: dict[str, str] = {}
_env: dict[str, str] | None = None  # FUSION_KERNELS, parsed at first use and again after each set_backend


def _env_overrides() -> dict[str, str]:
    global _env
    if _env is None:
        spec = os.environ.get("FUSION_KERNELS", "").strip()
        out: dict[str, str] = {}
        for item in filter(None, (s.strip() for s in spec.split(","))):
            op, _, backend = item.partition("=")
            if op not in OPS or not backend:
                raise ValueError(f"FUSION_KERNELS entry {item!r}: expected op=backend with op in {OPS}")
            out[op] = backend
        _env = out
    return _env


def set_backend(op: str, backend: str | None) -> None:
    """Force ``op`` to ``backend`` (None restores the automatic choice); ``FUSION_KERNELS`` is read again."""
    global _env
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; ops are {OPS}")
    _env = None
    if backend is None:
        _overrides.pop(op, None)
    else:
        _overrides[op] = backend


def requested(op: str) -> str | None:
    """The backend asked for ``op`` (an override, else the env var), or None."""
    return _overrides.get(op) or _env_overrides().get(op)
