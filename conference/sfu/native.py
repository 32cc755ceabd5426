"""Which classes the forwarding core's per-copy state lives in: C types of the native helper
(``_fastpath.c``) when it is built from these sources, else plain-slot Python classes with the
same attribute names. The native fan-out reads and writes the C types' fields in place (no int
object to chase or allocate per copy); Python code sees attributes either way."""

from __future__ import annotations

from types import ModuleType

# The interface of _fastpath (its ``API``) these sources are written for: a build left from older
# sources (a worktree not rebuilt after a pull) is not used, and the pure-Python path runs.
NATIVE_API = 7


def fastpath() -> ModuleType | None:
    """The native helper if it was built and fits these sources, else None."""
    try:
        from . import _fastpath  # type: ignore[attr-defined]
    except ImportError:
        return None
    if getattr(_fastpath, "API", 0) != NATIVE_API:
        return None
    return _fastpath  # type: ignore[no-any-return]


def state_base(name: str, fallback: type) -> type:
    """``_fastpath.<name>`` when the helper fits, else ``fallback`` (its pure-Python twin)."""
    module = fastpath()
    return fallback if module is None else getattr(module, name)  # type: ignore[no-any-return]
