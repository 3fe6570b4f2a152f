"""A kernel backend that cannot build here falls back to its op's portable backend, with one warning.

Which backends are guarded, and against which build errors, is said where they are registered (``registry.py``).
Triton's compile errors and out-of-resource failures (a new GPU, another Triton version) are raised before
anything runs, so the op can safely run elsewhere. A forward that fails runs on the fallback; a backward whose
kernels fail recomputes its gradient through the fallback op (``backward``). CUDA faults at run time poison the
context: those are not caught. ``FUSION_STRICT_KERNELS=1`` turns the fallback into an error.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence

import torch

log = logging.getLogger("fusion.kernels.dispatch")
failed: dict[str, str] = {}  # op -> the error that sent it to its fallback
# op -> () -> (the fallback backend's function, its name): looked up when needed, as it may be registered later
_fallbacks: dict[str, Callable[[], tuple[Callable, str]]] = {}
_guarded_backend: dict[str, str] = {}  # op -> the name of its guarded backend, for the warning


def strict() -> bool:
    return os.environ.get("FUSION_STRICT_KERNELS", "0") not in ("", "0")


def compile_errors() -> tuple[type[BaseException], ...]:
    """Triton's build-time failures: front end, ptxas, and too many registers / too much shared memory."""
    from triton.compiler.errors import CompilationError
    from triton.runtime.errors import OutOfResources, PTXASError
    return CompilationError, OutOfResources, PTXASError


def _give_up(op: str, error: BaseException) -> None:
    """Record that ``op``'s kernels cannot build here and say so once (or re-raise in strict mode)."""
    if strict():
        raise error
    text = str(error).strip()
    failed[op] = f"{type(error).__name__}: {text.splitlines()[-1] if text else ''}"
    name = _fallbacks[op]()[1]
    log.warning("fusion.kernels: the %s %s kernel failed to build on this device (%s); %s runs on %s from now on. "
                "Choose it explicitly with FUSION_KERNELS=%s=%s; FUSION_STRICT_KERNELS=1 makes this an error.",
                _guarded_backend[op], op, failed[op], op, name, op, name)


def guarded(op: str, backend: str, kernel_fn: Callable, errors: Callable[[], tuple[type[BaseException], ...]],
            fallback: Callable[[], tuple[Callable, str]]) -> Callable:
    """``kernel_fn`` until it raises one of ``errors()`` (it cannot build), then the function ``fallback()`` names,
    for good (one warning names the op and the error)."""
    _fallbacks[op], _guarded_backend[op] = fallback, backend

    @functools.wraps(kernel_fn)
    def call(*args, **kwargs):
        if op in failed:
            return fallback()[0](*args, **kwargs)
        try:
            return kernel_fn(*args, **kwargs)
        except errors() as e:
            _give_up(op, e)
            return fallback()[0](*args, **kwargs)

    return call


def forget(op: str) -> None:
    """Drop ``op``'s guard and its failure (its guarded backend was unregistered)."""
    for table in (_fallbacks, _guarded_backend, failed):
        table.pop(op, None)


def backward(op: str, run: Callable[[], Sequence[torch.Tensor | None]], inputs: Callable[[], Sequence[torch.Tensor]],
             needs: Sequence[bool], grads: Sequence[torch.Tensor | None], *args, **kwargs) -> list:
    """``run()`` (the Triton backward: one gradient per input); if its kernels cannot build, the gradients of the
    fallback op ``fallback(*inputs(), *args, **kwargs)`` for the outputs' ``grads``."""
    if op not in failed or op not in _fallbacks:
        try:
            return list(run())
        except compile_errors() as e:
            if op not in _fallbacks:
                raise
            _give_up(op, e)
    leaves = [x.detach().requires_grad_(need) for x, need in zip(inputs(), needs, strict=True)]
    with torch.enable_grad():
        out = _fallbacks[op]()[0](*leaves, *args, **kwargs)
    outs = out if isinstance(out, tuple) else (out,)
    pairs = [(o, g.to(o.dtype)) for o, g in zip(outs, grads, strict=True) if g is not None and o.requires_grad]
    wanted = [leaf for leaf in leaves if leaf.requires_grad]
    got = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True)
               if pairs and wanted else [None] * len(wanted))
    return [next(got) if need else None for need in needs]
