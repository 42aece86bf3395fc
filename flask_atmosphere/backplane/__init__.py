"""Backplanes carry broadcasts between processes; each process delivers a
broadcast to its own clients. ``MemoryBackplane`` (the default) stays inside
one process."""
from .memory import Backplane, MemoryBackplane

__all__ = ["Backplane", "MemoryBackplane"]
