"""A Triton op that cannot compile on this GPU falls back to the default backend, with one warning.

Compile errors and out-of-resource failures (a new GPU, another Triton version) are raised before anything
runs, so the op can safely run elsewhere. CUDA faults at run time poison the context: those are not caught.
``FUSION_STRICT_KERNELS=1`` turns the fallback into an error.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable

log = logging.getLogger("fusion.kernels.dispatch")
failed: dict[str, str] = {}  # op -> the error that sent it to its fallback


def strict() -> bool:
    return os.environ.get("FUSION_STRICT_KERNELS", "0") not in ("", "0")


def compile_errors() -> tuple[type[BaseException], ...]:
    """Triton's build-time failures: front end, ptxas, and too many registers / too much shared memory."""
    from triton.compiler.errors import CompilationError
    from triton.runtime.errors import OutOfResources, PTXASError
    return CompilationError, OutOfResources, PTXASError


def guarded(op: str, kernel_fn: Callable, fallback_fn: Callable, fallback_name: str) -> Callable:
    """``kernel_fn`` until it fails to build, then ``fallback_fn`` for good (one warning names op and error)."""

    @functools.wraps(kernel_fn)
    def call(*args, **kwargs):
        if op in failed:
            return fallback_fn(*args, **kwargs)
        try:
            return kernel_fn(*args, **kwargs)
        except compile_errors() as e:
            if strict():
                raise
            failed[op] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
            log.warning("fusion.kernels: the triton %s kernel failed to build on this GPU (%s); %s runs on %s "
                        "from now on. Choose it explicitly with FUSION_KERNELS=%s=%s; FUSION_STRICT_KERNELS=1 "
                        "makes this an error.", op, failed[op], op, fallback_name, op, fallback_name)
            return fallback_fn(*args, **kwargs)

    return call
