"""The table of ops and their backends that ``dispatch`` chooses from, filled by ``register``.

A backend is one function with its op's contract (``dispatch``'s docstring), registered under a name with what
the choice needs: whether it can run on this machine (``available``, fixed when it is registered, so that the
choice stays a plain lookup while Dynamo traces), the device types it is the default on, and the build errors
that send it to its op's portable backend for good (``fallback.py``). Each op has one portable backend
(``default_on=ANY_DEVICE``): plain torch, it runs on every device, is the default where no device-specific
backend is, and is where a kernel that cannot build falls back to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fusion.kernels import fallback

ANY_DEVICE = ("*",)  # default_on of an op's portable backend


@dataclass(frozen=True)
class Backend:
    op: str
    name: str
    fn: Callable  # what dispatch calls: the registered function, guarded when it has build errors
    available: bool
    default_on: tuple[str, ...]
    guarded: bool


_table: dict[str, dict[str, Backend]] = {}  # op -> backend name -> Backend
_defaults: dict[str, dict[str, str]] = {}  # op -> device type (or "*") -> the available backend it defaults to


def register(op: str, backend: str, *, available: bool = True, default_on: tuple[str, ...] = (),
             build_errors: Callable[[], tuple[type[BaseException], ...]] | None = None) -> Callable:
    """Decorator: the function runs ``op`` as ``backend``. ``default_on``: the device types it is the automatic
    choice on (``ANY_DEVICE`` for the op's portable backend); an unavailable backend is never chosen. An error
    of ``build_errors()`` sends the op to its portable backend, with one warning."""
    def add(fn: Callable) -> Callable:
        _check_free(op, backend, available, default_on, build_errors is not None)
        run = fn if build_errors is None else fallback.guarded(op, backend, fn, build_errors,
                                                               lambda: _portable_fn(op))
        _table.setdefault(op, {})[backend] = Backend(op, backend, run, bool(available), tuple(default_on),
                                                     build_errors is not None)
        if available:
            _defaults.setdefault(op, {}).update(dict.fromkeys(default_on, backend))
        return fn
    return add


def _check_free(op: str, backend: str, available: bool, default_on: tuple[str, ...], guarded: bool) -> None:
    """A name, an available default per device type, and a guarded backend (failures are kept per op) are each
    one per op."""
    have = _table.get(op, {})
    taken = _defaults.get(op, {}) if available else {}
    clash = [d for d in default_on if d in taken]
    if backend in have:
        raise ValueError(f"{op}: backend {backend!r} is already registered")
    if clash:
        raise ValueError(f"{op}: {taken[clash[0]]!r} is already the default on {clash[0]!r}")
    if guarded and any(b.guarded for b in have.values()):
        raise ValueError(f"{op}: only one backend per op may have build_errors")


def unregister(op: str, backend: str) -> None:
    """Remove a backend (an op left without one is removed too): for tests and plug-ins."""
    entry = lookup(op, backend, available_only=False)
    del _table[op][backend]
    _defaults[op] = {d: name for d, name in _defaults.get(op, {}).items() if name != backend}
    if entry.guarded:
        fallback.forget(op)
    if not _table[op]:
        del _table[op], _defaults[op]


def ops() -> tuple[str, ...]:
    return tuple(_table)


def backends(op: str) -> dict[str, Backend]:
    """``op``'s backends by name; an unknown op is a clear error."""
    if op not in _table:
        raise ValueError(f"unknown op {op!r}; ops are {ops()}")
    return _table[op]


def lookup(op: str, backend: str, *, available_only: bool = True) -> Backend:
    """The backend ``op`` runs as ``backend``; a clear error when it is not registered or cannot run here."""
    entry = backends(op).get(backend)
    if entry is not None and (entry.available or not available_only):
        return entry
    ready = sorted(name for name, b in _table[op].items() if b.available)
    why = "no backend of that name" if entry is None else "it is registered but cannot run on this machine"
    raise ValueError(f"backend {backend!r} is not available for {op}: {why}; available here: {ready}")


def default(op: str, device_type: str) -> str:
    """The backend ``op`` runs as on ``device_type`` when none is asked for: the available one registered as
    that device's default, else the portable one."""
    backends(op)  # an unknown op is a clear error
    chosen = _defaults.get(op, {})
    name = chosen.get(device_type) or chosen.get(ANY_DEVICE[0])
    if name is None:
        raise ValueError(f"{op} has no portable backend (register one with default_on=ANY_DEVICE)")
    return name


def portable(op: str) -> Backend:
    """The op's backend that runs on every device: the default where no other is, and the fallback."""
    return lookup(op, default(op, ANY_DEVICE[0]))


def _portable_fn(op: str) -> tuple[Callable, str]:
    entry = portable(op)
    return entry.fn, entry.name
