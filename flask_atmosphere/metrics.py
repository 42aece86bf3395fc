"""``Atmosphere.stats()`` as Prometheus metrics (the ``prometheus`` extra,
``prometheus_client``): a collector read at each scrape, and the text format
that ``ATMOSPHERE_METRICS_URL_PATH`` serves.

The metrics, all prefixed ``atmosphere_``:

- ``clients`` (gauge), by ``route`` and ``transport``;
- ``backplane_up`` (gauge, 1 or 0);
- ``disconnects_total`` (counter), by ``reason``;
- one counter ``<name>_total`` per counter of ``stats.Stats``
  (``connects_total``, ``deliveries_total``, ``messages_lost_total``, ...),
  present from the start at 0.
"""
from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .extension import Atmosphere

__all__ = ["AtmosphereCollector", "render"]

#: The counters exported even before they first move.
COUNTERS = ("connects", "messages_in", "broadcasts", "sends", "deliveries", "messages_lost",
            "messages_dropped", "slow_consumers", "refused")


class AtmosphereCollector(Collector):
    """A Prometheus collector of one ``Atmosphere``'s figures in this process.
    Register it with your own registry to export them beside your app's
    metrics: ``prometheus_client.REGISTRY.register(AtmosphereCollector(atmosphere))``.
    Scrape it on the serving hub's thread (a view of the app is)."""

    def __init__(self, atmosphere: Atmosphere):
        self.atmosphere = atmosphere

    def collect(self) -> Iterator[Metric]:
        """The metrics of the module's docstring, read now."""
        stats = self.atmosphere.stats()
        clients = GaugeMetricFamily("atmosphere_clients", "Clients connected now.",
                                    labels=["route", "transport"])
        pairs: Counter[tuple[str, str]] = Counter()
        for connection in self.atmosphere.registry:
            pairs[(connection.route, connection.transport or "opening")] += 1
        for (route, transport), n in sorted(pairs.items()):
            clients.add_metric([route, transport], n)
        yield clients
        yield GaugeMetricFamily("atmosphere_backplane_up",
                                "Whether the backplane reaches the other processes.",
                                value=1 if stats["backplane"].get("up", True) else 0)
        disconnects = CounterMetricFamily("atmosphere_disconnects",
                                          "Clients disconnected, by reason.", labels=["reason"])
        for reason, n in sorted(stats["disconnects"].items()):
            disconnects.add_metric([reason], n)
        yield disconnects
        counters: dict[str, Any] = {name: 0 for name in COUNTERS}
        counters.update((name, value) for name, value in stats.items()
                        if isinstance(value, int) and not isinstance(value, bool))
        for name, value in sorted(counters.items()):
            yield CounterMetricFamily(f"atmosphere_{name}", f"flask-atmosphere's {name}.",
                                      value=value)


def render(atmosphere: Atmosphere) -> bytes:
    """The Prometheus text exposition of ``atmosphere``'s figures alone."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AtmosphereCollector(atmosphere))
    return generate_latest(registry)
