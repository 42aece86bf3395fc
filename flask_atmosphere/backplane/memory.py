"""The in-process backplane: a broadcast goes straight to local delivery."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # pragma: no cover
    from ..broadcaster import Broadcast

__all__ = ["Backplane", "MemoryBackplane"]


class Backplane:
    """The interface of a backplane.

    ``start(deliver)`` is called once with the local delivery function; from
    then on ``publish(broadcast)`` must make every process (this one included)
    call its own ``deliver(broadcast)`` once.
    """

    def start(self, deliver: Callable[["Broadcast"], None]) -> None:
        raise NotImplementedError

    def publish(self, broadcast: "Broadcast") -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Release what ``start`` took; the default has nothing to release."""


class MemoryBackplane(Backplane):
    """One process only: ``publish`` delivers at once, on the calling greenlet."""

    def __init__(self) -> None:
        self._deliver: Callable[["Broadcast"], None] | None = None

    def start(self, deliver: Callable[["Broadcast"], None]) -> None:
        self._deliver = deliver

    def publish(self, broadcast: "Broadcast") -> None:
        if self._deliver is None:
            raise RuntimeError("MemoryBackplane.publish before start")
        self._deliver(broadcast)
