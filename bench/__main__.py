"""Benchmarks of flask-atmosphere against Flask-SocketIO and a raw
gevent-websocket relay. See bench/README.md.

    python -m bench run --server atmosphere --clients 1000 --messages 2000 --rate 100
    python -m bench compare --clients 1000 --messages 600 --rate 20
    python -m bench standard            # the comparison in bench/README.md
    python -m bench standard --quick    # a small smoke run of the same
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .harness import POLLING_SERVERS, SERVERS, machine, run_once

WS_SERVERS = ("raw", "atmosphere", "atmosphere_json", "socketio")

#: The standard comparison: (name, what it shows, servers, load).
STANDARD = [
    ("light-1000", "N=1000 at 2 msg/s, no server near saturation: CPU per unbatched delivery",
     WS_SERVERS, dict(clients=1000, messages=40, rate=2)),
    ("fixed-1000", "N=1000 at 20 msg/s: CPU per delivery, latency, RSS per idle connection",
     WS_SERVERS, dict(clients=1000, messages=600, rate=20)),
    ("fixed-3000", "N=3000 at 10 msg/s: CPU per delivery, p99 latency, RSS per idle connection;"
     " raw_send is the floor of one send() per socket",
     ("raw", "raw_send") + WS_SERVERS[1:], dict(clients=3000, messages=300, rate=10)),
    ("max-1000", "N=1000 as fast as a window of 8 allows: max fan-out",
     WS_SERVERS, dict(clients=1000, messages=600, rate=0, window=8)),
    ("max-1000-w32", "N=1000 as fast as a window of 32 allows (room for batching)",
     WS_SERVERS, dict(clients=1000, messages=1000, rate=0, window=32)),
    ("10k", "N=10000 at 1 broadcast/s: p99 latency, connect time, RSS",
     WS_SERVERS, dict(clients=10000, messages=60, rate=1)),
    ("longpoll", "long-polling, N=200 pollers, window 20: deliveries/s, loss",
     POLLING_SERVERS, dict(transport="poll", clients=200, messages=2000, rate=0, window=20)),
]

QUICK = {"clients": 0.05, "messages": 0.1}


def _quick(load: dict) -> dict:
    load = dict(load)
    load["clients"] = max(5, int(load["clients"] * QUICK["clients"]))
    load["messages"] = max(10, int(load["messages"] * QUICK["messages"]))
    if load.get("rate"):
        load["rate"] = max(load["rate"], 10)
    return load


# -- the table -------------------------------------------------------------------

def _fmt(value, digits=1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ratio(value, base) -> str:
    if value is None or not base:
        return "-"
    return f"{value / base:.2f}"


def table(results: list[dict]) -> str:
    """A markdown table of ``results`` (one per server, same load), with
    ratios against the raw relay and against Flask-SocketIO when present."""
    by_server = {r["server"]: r for r in results}
    raw, sio = by_server.get("raw"), by_server.get("socketio")
    head = ["server", "connect (ready) s", "RSS/conn B", "deliv/s", "p50 ms", "p90 ms", "p99 ms",
            "CPU us/deliv", "srv CPU", "lost/dup/ooo",
            "CPU ×raw", "deliv/s ×raw", "p99 ×raw", "CPU ×sio", "deliv/s ×sio"]
    rows = [head, ["---"] * len(head)]
    for r in results:
        lat = r["latency_ms"]
        cpu = r["server_cpu_us_per_delivery"]
        row = [
            r["server"], f'{_fmt(r["connect"]["wall_s"], 1)} ({_fmt(r["connect"].get("ready_s"), 1)})', _fmt(r["rss"]["per_connection_bytes"]),
            _fmt(r["deliveries_per_s"], 0), _fmt(lat["p50"], 2), _fmt(lat["p90"], 2),
            _fmt(lat["p99"], 2), _fmt(cpu, 1), f"{100 * r['server_cpu_util']:.0f}%",
            f"{r['lost']}/{r['duplicates']}/{r['out_of_order']}",
            _ratio(cpu, raw and raw["server_cpu_us_per_delivery"]),
            _ratio(r["deliveries_per_s"], raw and raw["deliveries_per_s"]),
            _ratio(lat["p99"], raw and raw["latency_ms"]["p99"]),
            _ratio(cpu, sio and sio["server_cpu_us_per_delivery"]),
            _ratio(r["deliveries_per_s"], sio and sio["deliveries_per_s"]),
        ]
        rows.append(row)
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def notes(results: list[dict]) -> str:
    """What else a reader should know about these runs: connection failures,
    stalls, a busy machine, a load generator near its limit."""
    out = []
    for r in results:
        flags = []
        if r["connect"]["failures"]:
            flags.append(f"{r['connect']['failures']} connections failed")
        if r.get("not_ready"):
            flags.append(f"{r['not_ready']} receivers never got a probe")
        if r["stalled"]:
            flags.append("stalled (nothing arrived for the idle timeout, or out of time)")
        if r["disconnects"] or r["errors"]:
            flags.append(f"{r['disconnects']} disconnects, {r['errors']} errors")
        if r["loadgen_cpu_util"] > 0.85:
            flags.append(f"load generator at {100 * r['loadgen_cpu_util']:.0f}% of its core")
        background = r.get("background_busy")
        if background is not None and background > 0.15:
            flags.append(f"other processes kept the cores {100 * background:.0f}% busy just before")
        server_core = r.get("server_core")
        busy = r["core_busy"].get(str(server_core)) if server_core is not None else None
        if busy is not None and busy - r["server_cpu_util"] > 0.15:
            flags.append(f"others used {100 * (busy - r['server_cpu_util']):.0f}% of the server's core")
        if r.get("sender_lag_max_ms", 0) > 100 and r.get("rate"):
            flags.append(f"the sender fell up to {r['sender_lag_max_ms']:.0f} ms behind its schedule")
        if flags:
            out.append(f"- {r['server']}: " + "; ".join(flags))
    return "\n".join(out)


def describe(load: dict) -> str:
    parts = [f"N={load.get('clients')}", f"M={load.get('messages')}"]
    parts.append(f"rate={load['rate']:g}/s" if load.get("rate") else "rate=max")
    if load.get("window"):
        parts.append(f"window={load['window']}")
    parts.append(f"transport={load.get('transport', 'ws')}")
    parts.append(f"size={load.get('size', 150)}B")
    return ", ".join(parts)


def command_line(servers, load: dict, args=None) -> str:
    cmd = ["python -m bench compare", "--servers", ",".join(servers)]
    if args is not None and args.repeat > 1:
        cmd += ["--repeat", str(args.repeat)]
    if args is not None and args.rev:
        cmd += ["--rev", args.rev]
    if args is not None and args.wait_quiet:
        cmd += ["--wait-quiet", f"{args.wait_quiet:g}"]
    for key in ("transport", "clients", "messages", "rate", "window", "size"):
        if key in load:
            cmd += [f"--{key}", f"{load[key]:g}" if isinstance(load[key], float) else str(load[key])]
    return " ".join(cmd)


# -- commands --------------------------------------------------------------------

def _load_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--transport", choices=["ws", "poll"], default="ws",
                        help="how the receivers connect: WebSocket or long-polling")
    parser.add_argument("--clients", "-n", type=int, default=100, help="receivers (N)")
    parser.add_argument("--messages", "-m", type=int, default=200, help="messages (M)")
    parser.add_argument("--rate", type=float, default=0,
                        help="messages per second; 0 (default): as fast as the window allows")
    parser.add_argument("--window", "-w", type=int, default=0,
                        help="at most W messages in flight; 0: none with --rate, 10 without")
    parser.add_argument("--size", type=int, default=150, help="message size in bytes")
    parser.add_argument("--idle-timeout", type=float, default=5.0)
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    _machine_args(parser)


def _machine_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rev", default=None,
                        help="benchmark flask_atmosphere as of this git revision (e.g. HEAD), "
                             "unpacked aside, instead of the working tree")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help="before each run, wait up to SECONDS for other processes to "
                             "leave the cores (below 10%% busy)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run each server this many times (interleaved) and keep the run "
                             "that other processes disturbed least")


def _load(args) -> dict:
    return dict(transport=args.transport, clients=args.clients, messages=args.messages,
                rate=args.rate, window=args.window, size=args.size,
                idle_timeout=args.idle_timeout, max_seconds=args.max_seconds)


def disturbance(result: dict) -> float:
    """How much other processes used the two cores during a run (0..2)."""
    busy = result["core_busy"]
    server = busy.get(str(result.get("server_core")), 0) - result["server_cpu_util"]
    loadgen = busy.get(str(result.get("loadgen_core")), 0) - result["loadgen_cpu_util"]
    return max(server, 0) + max(loadgen, 0)


def _brief(r: dict) -> dict:
    """The main numbers of one run, kept beside the one chosen."""
    return {"deliveries_per_s": r["deliveries_per_s"],
            "server_cpu_us_per_delivery": r["server_cpu_us_per_delivery"],
            "server_cpu_util": r["server_cpu_util"], "latency_ms": r["latency_ms"],
            "lost": r["lost"], "core_busy": r["core_busy"],
            "loadgen_cpu_util": r["loadgen_cpu_util"], "disturbance": round(disturbance(r), 3)}


def _run_all(servers, load: dict, verbose: bool, repeat: int = 1,
             wait_quiet: float = 0, rev: str | None = None) -> list[dict]:
    runs: dict[str, list[dict]] = {server: [] for server in servers}
    for attempt in range(max(1, repeat)):
        for server in servers:
            if verbose:
                print(f"== {server}: {describe(load)}"
                      + (f" (run {attempt + 1} of {repeat})" if repeat > 1 else ""),
                      file=sys.stderr, flush=True)
            runs[server].append(run_once(server, verbose=verbose, wait_quiet=wait_quiet,
                                         rev=rev, **load))
            time.sleep(1)  # let the sockets of the last run go
    results = []
    for server in servers:
        best = min(runs[server], key=disturbance)
        best["runs"] = len(runs[server])
        best["disturbance"] = round(disturbance(best), 3)
        best["all_runs"] = [_brief(r) for r in runs[server]]
        results.append(best)
    return results


def _save(path: Path | None, payload: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1))
    print(f"results written to {path}", file=sys.stderr)


def cmd_run(args) -> None:
    load = _load(args)
    if args.profile and args.perf:
        raise SystemExit("--profile and --perf: one profiler at a time")
    profile = Path(args.profile or args.perf) if (args.profile or args.perf) else None
    result = run_once(args.server, verbose=not args.quiet, profile=profile,
                      profile_native=args.native, profile_perf=bool(args.perf),
                      wait_quiet=args.wait_quiet, rev=args.rev, **load)
    info = _machine(args)
    print(f"{describe(load)}; {_machine_line(info)}\n")
    print(table([result]))
    extra = notes([result])
    if extra:
        print("\n" + extra)
    if args.full:
        print(json.dumps(result, indent=1))
    _save(args.json, {"machine": info, "load": load, "results": [result]})
    if args.perf:
        from .perf_summary import report
        print("\n" + report(args.perf, deliveries=result["deliveries"]))
    elif profile is not None:
        from .profile_summary import report
        print("\n" + report(str(profile), top=25))


def cmd_compare(args) -> None:
    servers = args.servers.split(",")
    if args.transport == "poll":
        servers = [s for s in servers if s in POLLING_SERVERS]
    for server in servers:
        if server not in SERVERS and not (Path(__file__).parent / "servers" / f"{server}.py").exists():
            raise SystemExit(f"unknown server {server!r}; one of {', '.join(SERVERS)}")
    load = _load(args)
    results = _run_all(servers, load, not args.quiet, args.repeat, args.wait_quiet, args.rev)
    info = _machine(args)
    print(f"{describe(load)}; {_machine_line(info)}\n")
    print(table(results))
    extra = notes(results)
    if extra:
        print("\n" + extra)
    _save(args.json, {"machine": info, "load": load, "results": results})


def cmd_standard(args) -> None:
    chosen = args.only.split(",") if args.only else [name for name, *_ in STANDARD]
    info = _machine(args)
    report = [f"# Standard comparison{' (quick)' if args.quick else ''}",
              "", _machine_line(info), ""]
    saved = {"machine": info, "scenarios": {}}
    for name, what, servers, load in STANDARD:
        if name not in chosen:
            continue
        load = _quick(load) if args.quick else dict(load)
        servers = [s for s in servers if not args.servers or s in args.servers.split(",")]
        results = _run_all(servers, load, not args.quiet, args.repeat, args.wait_quiet, args.rev)
        section = [f"## {name}: {what}", "", f"`{command_line(servers, load, args)}`", "",
                   table(results)]
        extra = notes(results)
        if extra:
            section += ["", extra]
        section.append("")
        print("\n".join(section), flush=True)
        report += section
        saved["scenarios"][name] = {"load": load, "results": results}
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text("\n".join(report) + "\n")
        print(f"report written to {args.markdown}", file=sys.stderr)
    _save(args.json, saved)


def _machine(args) -> dict:
    info = machine()
    if getattr(args, "rev", None):
        from .harness import snapshot
        info["package_rev"] = snapshot(args.rev)[1][:12]
    return info


def _machine_line(info: dict) -> str:
    p = info["packages"]
    rev = info.get("package_rev") or info["git"]
    return (f"{info['cpu']}, {info['cores']} cores, Linux {info['kernel']}, Python {info['python']}; "
            f"flask-atmosphere {p['flask-atmosphere']} ({rev}), Flask {p['Flask']}, "
            f"gevent {p['gevent']}, gevent-websocket {p['gevent-websocket']}, "
            f"Flask-SocketIO {p['Flask-SocketIO']} (python-socketio {p['python-socketio']}, "
            f"python-engineio {p['python-engineio']}); load generator: picows {p['picows']}, "
            f"uvloop {p['uvloop']}, aiohttp {p['aiohttp']}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="one server, one load")
    run.add_argument("--server", "-s", default="atmosphere",
                     help=f"{', '.join(SERVERS)}, or the name of another file in bench/servers/")
    _load_args(run)
    run.add_argument("--profile", default=None, metavar="FILE",
                     help="record the server with py-spy during the run (raw collapsed stacks "
                          "to FILE) and print a summary")
    run.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    run.add_argument("--perf", default=None, metavar="FILE",
                     help="record the server with Linux perf during the run (perf.data to FILE; "
                          "kernel and C frames, not Python's) and print where each delivery's "
                          "CPU time goes")
    run.add_argument("--full", action="store_true", help="print every number as JSON too")
    run.set_defaults(func=cmd_run)

    compare = sub.add_parser("compare", help="several servers, the same load, side by side")
    compare.add_argument("--servers", default=",".join(WS_SERVERS),
                         help=f"comma-separated, of {', '.join(SERVERS)}")
    _load_args(compare)
    compare.set_defaults(func=cmd_compare)

    standard = sub.add_parser("standard", help="the standard comparison of bench/README.md")
    standard.add_argument("--quick", action="store_true", help="a small smoke run of the same")
    standard.add_argument("--only", default=None,
                          help="comma-separated scenario names: "
                               + ", ".join(name for name, *_ in STANDARD))
    standard.add_argument("--servers", default=None, help="only these servers")
    standard.add_argument("--markdown", type=Path, default=None, help="write the report here")
    standard.add_argument("--json", type=Path, default=None, help="write every number here")
    standard.add_argument("--quiet", "-q", action="store_true")
    _machine_args(standard)
    standard.set_defaults(func=cmd_standard)

    args = parser.parse_args(argv)
    if args.command in ("run", "compare") and args.clients < 1:
        parser.error("--clients must be at least 1")
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    args.func(args)


if __name__ == "__main__":
    main()
