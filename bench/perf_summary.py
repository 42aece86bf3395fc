"""Summarise a Linux ``perf record -e cpu-clock`` profile of a server
(``python -m bench run --perf FILE``) as CPU time per delivery.

    python -m bench.perf_summary perf.data DELIVERIES [--top 15]

Prints the server's CPU time in the run phase split by where it ran (the
kernel, the Python interpreter, each extension module), then the functions
that took the most, each in microseconds per delivery. With ``cpu-clock``
each sample's period is CPU time in nanoseconds, so the sums are times, not
just shares. ``perf report`` does the reading; this only adds up its lines.

Inside ``_PyEval_EvalFrameDefault`` (the interpreter loop) ``perf annotate
-s _PyEval_EvalFrameDefault`` shows which instructions take the time: in a
fan-out over many clients, mostly the loads of slot attributes of
per-client objects and the reference count of the objects they point to,
i.e. cache misses, one or more per object touched per client.
"""
from __future__ import annotations

import argparse
import subprocess


def _periods(path: str, fields: str) -> list[tuple[int, str]]:
    """``(period in ns, the rest of the line)`` for each line of ``perf report``."""
    out = subprocess.run(["perf", "report", "-i", path, "--no-children", "-F", fields,
                          "-g", "none", "-q", "--stdio"],
                         capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        period, _, rest = line.strip().partition(" ")
        if period.isdigit():
            rows.append((int(period), " ".join(rest.split())))
    return rows


def report(path: str, deliveries: int, top: int = 15, unit: str = "delivery",
           phase: str = "the run phase") -> str:
    """The summary of ``path`` for a run of ``deliveries`` deliveries (or
    of another ``unit``: ``connection`` for a connect storm)."""
    if not deliveries:
        return f"no {unit}: nothing to divide by"
    per = 1e-3 / deliveries  # ns over the run -> µs per delivery
    by_dso = _periods(path, "period,dso")
    total = sum(period for period, _ in by_dso)
    lines = [f"server CPU in {phase}: {total * per:.2f} µs per {unit} (perf, cpu-clock)",
             "", "by where it ran:"]
    lines += [f"  {period * per:6.2f} µs  {100 * period / total:5.1f} %  {dso}"
              for period, dso in by_dso[:8]]
    lines += ["", f"top {top} functions:"]
    lines += [f"  {period * per:6.2f} µs  {100 * period / total:5.1f} %  {name}"
              for period, name in _periods(path, "period,dso,sym")[:top]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("perf_data")
    parser.add_argument("deliveries", type=int)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    print(report(args.perf_data, args.deliveries, args.top))


if __name__ == "__main__":
    main()
