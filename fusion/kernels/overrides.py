"""The backend each op was asked for: ``set_backend`` first, then the ``FUSION_KERNELS`` env var
(``"attention=sdpa,rms_norm=eager"``), read once and again after each ``set_backend``. ``dispatch`` adds the
measured CPU choice and the device default behind them."""

from __future__ import annotations

import os

from fusion.kernels import registry

_overrides: dict[str, str] = {}
_env: dict[str, str] | None = None  # FUSION_KERNELS, parsed at first use and again after each set_backend


def _parse(spec: str) -> dict[str, str]:
    """``"op=backend,..."`` -> {op: backend}; ops must be registered (backends are checked where they are used)."""
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        op, _, backend = item.partition("=")
        if op not in registry.ops() or not backend:
            raise ValueError(f"FUSION_KERNELS entry {item!r}: expected op=backend with op in {registry.ops()}")
        out[op] = backend
    return out


def _env_overrides() -> dict[str, str]:
    global _env
    if _env is None:
        _env = _parse(os.environ.get("FUSION_KERNELS", "").strip())
    return _env


def set_backend(op: str, backend: str | None) -> None:
    """Force ``op`` to ``backend`` (None restores the automatic choice); ``FUSION_KERNELS`` is read again. A
    backend that is not registered or cannot run here is an error now."""
    global _env
    if backend is None:
        registry.backends(op)  # an unknown op is an error
        _overrides.pop(op, None)
    else:
        registry.lookup(op, backend)
        _overrides[op] = backend
    _env = None


def requested(op: str) -> str | None:
    """The backend asked for ``op`` (an override, else the env var), or None."""
    return _overrides.get(op) or _env_overrides().get(op)
