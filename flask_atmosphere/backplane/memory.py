"""The in-process backplane: a broadcast goes straight to local delivery."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover
    from ..broadcast import Broadcast

__all__ = ["Backplane", "MemoryBackplane"]


class Backplane:
    """The interface of a backplane.

    ``start(deliver, lost, count)`` is called once with the local delivery
    function (safe from any thread), what to call when publications are lost
    for good (``lost(shard, shards, count)``) and the app's counters
    (``count(name, n)``); from then on ``publish(broadcast)`` must make every
    process (this one included) call its own ``deliver(broadcast)`` once.
    """

    #: ``publish`` may be called from any thread (else only the hub's).
    thread_safe = False

    def start(self, deliver: Callable[["Broadcast"], None],
              lost: Callable[[int, int, int | None], None] | None = None,
              count: Callable[[str, int], None] | None = None) -> None:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        """What ``Atmosphere.stats()`` shows of the backplane."""
        return {"kind": "memory", "up": True}

    def publish(self, broadcast: "Broadcast") -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Release what ``start`` took; the default has nothing to release."""


class MemoryBackplane(Backplane):
    """One process only: ``publish`` delivers at once, on the calling greenlet."""

    def __init__(self) -> None:
        self._deliver: Callable[["Broadcast"], None] | None = None

    def start(self, deliver: Callable[["Broadcast"], None],
              lost: Callable[[int, int, int | None], None] | None = None,
              count: Callable[[str, int], None] | None = None) -> None:
        self._deliver = deliver

    def publish(self, broadcast: "Broadcast") -> None:
        if self._deliver is None:
            raise RuntimeError("MemoryBackplane.publish before start")
        self._deliver(broadcast)
