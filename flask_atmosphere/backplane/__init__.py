"""Backplanes carry broadcasts between processes; each process delivers a
broadcast to its own clients. ``MemoryBackplane`` (the default) stays inside
one process; ``RedisBackplane`` (``ATMOSPHERE_BACKPLANE = "redis://…"``,
redis-py from the ``redis`` extra) reaches every process of the app."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .memory import Backplane, MemoryBackplane

if TYPE_CHECKING:  # pragma: no cover
    from .redis import RedisBackplane  # noqa: F401

__all__ = ["Backplane", "MemoryBackplane", "RedisBackplane"]


def __getattr__(name: str) -> Any:
    if name == "RedisBackplane":  # imported on use: redis-py is optional
        from .redis import RedisBackplane
        return RedisBackplane
    raise AttributeError(f"module 'flask_atmosphere.backplane' has no attribute {name!r}")
