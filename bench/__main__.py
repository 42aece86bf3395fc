"""Benchmarks of flask-atmosphere against Flask-SocketIO and a raw
gevent-websocket relay. See bench/README.md.

    python -m bench run --server atmosphere --clients 1000 --messages 2000 --rate 100
    python -m bench compare --clients 1000 --messages 600 --rate 20
    python -m bench standard            # the comparison in bench/README.md
    python -m bench standard --quick    # a small smoke run of the same
    python -m bench storm --servers raw,atmosphere --clients 3000,10000   # connect cost
    python -m bench backplane           # the Redis backplane against the memory one
    python -m bench soak                # Redis memory over rounds of clients

A server may be named ``SERVER@REV`` (``atmosphere@8440b72``): that one
imports flask_atmosphere as of git revision REV, so that two revisions run
interleaved in one comparison.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
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


def split_label(label: str, rev: str | None = None) -> tuple[str, str | None]:
    """``SERVER@REV`` -> (SERVER, REV); a plain ``SERVER`` keeps ``rev``
    (``--rev``, or None for the working tree)."""
    server, at, own = label.partition("@")
    return server, (own if at else rev)


def check_servers(labels) -> None:
    for label in labels:
        server, _ = split_label(label)
        if server not in SERVERS and not (Path(__file__).parent / "servers" / f"{server}.py").exists():
            raise SystemExit(f"unknown server {server!r}; one of {', '.join(SERVERS)}")


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


def run_flags(args) -> list[str]:
    """The flags of how a run was made (rounds, revision, quiet), as a
    command line that reproduces it gives them."""
    flags = []
    if args.repeat > 1:
        flags += ["--repeat", str(args.repeat)]
    if args.rev:
        flags += ["--rev", args.rev]
    if args.wait_quiet:
        flags += ["--wait-quiet", f"{args.wait_quiet:g}"]
    if args.retry_disturbed:
        flags += ["--retry-disturbed", str(args.retry_disturbed)]
    return flags


def command_line(servers, load: dict, args=None) -> str:
    cmd = ["python -m bench compare", "--servers", ",".join(servers)]
    if args is not None:
        cmd += run_flags(args)
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
    parser.add_argument("--retry-disturbed", type=int, default=0, metavar="K",
                        help="run a run again, up to K times, when other processes used more "
                             "than --max-disturbance of the cores during it; keep the least "
                             "disturbed try")
    parser.add_argument("--max-disturbance", type=float, default=0.15, metavar="SHARE",
                        help="what --retry-disturbed tolerates: other processes' share of a "
                             "core during a run, both cores added (0.15)")


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


def run_retrying(call, retries: int = 0, limit: float = 0.15, verbose: bool = False) -> dict:
    """``call()`` (one run), again up to ``retries`` times while other
    processes disturbed it more than ``limit`` (see :func:`disturbance`);
    the least disturbed try, with ``tries`` and every try's disturbance."""
    tries = [call()]
    while disturbance(tries[-1]) > limit and len(tries) <= retries:
        if verbose:
            print(f"  disturbed ({100 * disturbance(tries[-1]):.0f}% of a core by others): "
                  f"again ({len(tries)} of {retries})", file=sys.stderr, flush=True)
        time.sleep(1)
        tries.append(call())
    best = min(tries, key=disturbance)
    best["tries"] = len(tries)
    best["tries_disturbance"] = [round(disturbance(r), 3) for r in tries]
    return best


def _run_all(servers, load: dict, verbose: bool, repeat: int = 1,
             wait_quiet: float = 0, rev: str | None = None, retries: int = 0,
             limit: float = 0.15) -> list[dict]:
    runs: dict[str, list[dict]] = {server: [] for server in servers}
    for attempt in range(max(1, repeat)):
        for server in servers:
            if verbose:
                print(f"== {server}: {describe(load)}"
                      + (f" (run {attempt + 1} of {repeat})" if repeat > 1 else ""),
                      file=sys.stderr, flush=True)
            name, server_rev = split_label(server, rev)
            result = run_retrying(
                functools.partial(run_once, name, verbose=verbose, wait_quiet=wait_quiet,
                                  rev=server_rev, **load), retries, limit, verbose)
            result["server"] = server
            runs[server].append(result)
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
    server, rev = split_label(args.server, args.rev)
    if args.storm:
        load.update(messages=0, transport="ws")
    # no --retry-disturbed with a profiler: the profile would be the last try's
    result = run_retrying(
        lambda: run_once(server, verbose=not args.quiet, profile=profile,
                         profile_native=args.native, profile_perf=bool(args.perf),
                         wait_quiet=args.wait_quiet, rev=rev, storm=args.storm,
                         connect_concurrency=args.concurrency, **load),
        0 if profile else args.retry_disturbed, args.max_disturbance, not args.quiet)
    result["server"] = args.server
    info = _machine(args)
    if args.storm:
        print(f"connect storm, N={load['clients']}, {args.concurrency} handshakes at a time; "
              f"{_machine_line(info)}\n")
        print(storm_table({args.server: [result]}))
        extra = storm_notes({args.server: [result]})
        if extra:
            print("\n" + extra)
        if args.full:
            print(json.dumps(result, indent=1))
        _save(args.json, {"machine": info, "load": load, "results": [result]})
        if args.perf:
            from .perf_summary import report
            print("\n" + report(args.perf, deliveries=len_connected(result), unit="connection",
                                 phase="the connect phase"))
        elif profile is not None:
            from .profile_summary import report
            print("\n" + report(str(profile), top=25))
        return
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
        servers = [s for s in servers if split_label(s)[0] in POLLING_SERVERS]
    check_servers(servers)
    load = _load(args)
    results = _run_all(servers, load, not args.quiet, args.repeat, args.wait_quiet, args.rev,
                       args.retry_disturbed, args.max_disturbance)
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
        results = _run_all(servers, load, not args.quiet, args.repeat, args.wait_quiet, args.rev,
                           args.retry_disturbed, args.max_disturbance)
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


# -- the connect storm -------------------------------------------------------------

def len_connected(result: dict) -> int:
    """How many receivers connected in a storm."""
    return result["clients"] - result["connect"]["failures"]


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def storm_table(runs: dict[str, list[dict]], reference: str = "raw") -> str:
    """A markdown table of connect storms: one row per server, the median of
    its rounds (``runs[server]``, interleaved with the other servers'), and
    ratios to ``reference`` taken round by round (the median of the ratios)."""
    ref = runs.get(reference)
    head = ["server", "connects/s: handshakes (ready)", "wall s: handshakes (ready)",
            "CPU µs/connect",
            f"×{reference}", "rounds: CPU µs/connect", "handshake phase µs/connect",
            f"×{reference}", "after ready µs/conn", "probe µs/frame",
            "srv CPU", "loadgen CPU", "handshake p50/p99 ms", "RSS/conn B"]
    rows = [head, ["---"] * len(head)]

    def ratio(server_runs, key):
        if not ref:
            return "-"
        ratios = [r["connect"][key] / b["connect"][key]
                  for r, b in zip(server_runs, ref, strict=False) if b["connect"][key]]
        return _fmt(_median(ratios), 2) if ratios else "-"

    for server, rs in runs.items():
        c = [r["connect"] for r in rs]
        rows.append([
            server,
            f'{_fmt(_median([x["per_s"] for x in c]), 0)} '
            f'({_fmt(_median([x["ready_per_s"] for x in c]), 0)})',
            f'{_fmt(_median([x["wall_s"] for x in c]), 2)} '
            f'({_fmt(_median([x["ready_s"] for x in c]), 2)})',
            _fmt(_median([x["server_cpu_us_per_connection"] for x in c]), 1),
            ratio(rs, "server_cpu_us_per_connection"),
            ", ".join(_fmt(x["server_cpu_us_per_connection"], 0) for x in c),
            _fmt(_median([x["server_cpu_us_handshakes"] for x in c]), 1),
            ratio(rs, "server_cpu_us_handshakes"),
            _fmt(_median([x["server_cpu_us_after_ready"] for x in c]), 1),
            _fmt(_median([x["probe_cpu_us_per_frame"] for x in c]), 1),
            f'{100 * _median([r["server_cpu_util"] for r in rs]):.0f}%',
            f'{100 * _median([r["loadgen_cpu_util"] for r in rs]):.0f}%',
            f'{_fmt(_median([x["p50_ms"] for x in c]), 1)}/'
            f'{_fmt(_median([x["p99_ms"] for x in c]), 1)}',
            _fmt(_median([r["rss"]["per_connection_bytes"] for r in rs]), 0),
        ])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def storm_notes(runs: dict[str, list[dict]]) -> str:
    out = []
    for server, rs in runs.items():
        for k, r in enumerate(rs, 1):
            flags = []
            c = r["connect"]
            if c["failures"]:
                flags.append(f"{c['failures']} connections failed")
            if r.get("not_ready"):
                flags.append(f"{r['not_ready']} receivers never got a probe")
            if r["errors"] or r["disconnects"]:
                flags.append(f"{r['disconnects']} disconnects, {r['errors']} errors")
            background = r.get("background_busy")
            if background is not None and background > 0.15:
                flags.append(f"other processes kept the cores {100 * background:.0f}% busy "
                             "just before")
            d = disturbance(r)
            if d > 0.15:
                flags.append(f"others used {100 * d:.0f}% of a core during the storm")
            if flags:
                out.append(f"- {server}, round {k}: " + "; ".join(flags))
    return "\n".join(out)


def storm_command(args, n: int) -> str:
    cmd = ["python -m bench storm", "--servers", args.servers, "--clients", str(n)]
    if args.concurrency != 100:
        cmd += ["--concurrency", str(args.concurrency)]
    return " ".join(cmd + run_flags(args))


def cmd_storm(args) -> None:
    servers = args.servers.split(",")
    check_servers(servers)
    sizes = [int(x) for x in str(args.clients).split(",")]
    info = _machine(args)
    report = ["# Connect storm", "", _machine_line(info), ""]
    saved = {"machine": info, "storms": {}}
    verbose = not args.quiet
    for n in sizes:
        runs: dict[str, list[dict]] = {server: [] for server in servers}
        for attempt in range(max(1, args.repeat)):
            for label in servers:
                if verbose:
                    print(f"== {label}: connect storm, N={n}"
                          + (f" (round {attempt + 1} of {args.repeat})" if args.repeat > 1 else ""),
                          file=sys.stderr, flush=True)
                server, rev = split_label(label, args.rev)
                result = run_retrying(
                    functools.partial(run_once, server, storm=True, clients=n, messages=0,
                                      connect_concurrency=args.concurrency, verbose=verbose,
                                      wait_quiet=args.wait_quiet, rev=rev),
                    args.retry_disturbed, args.max_disturbance, verbose)
                result["server"] = label
                runs[label].append(result)
                time.sleep(1)  # let the sockets of the last run go
        section = [f"## N={n}", "", f"`{storm_command(args, n)}`", "",
                   storm_table(runs, args.reference)]
        extra = storm_notes(runs)
        if extra:
            section += ["", extra]
        section.append("")
        print("\n".join(section), flush=True)
        report += section
        saved["storms"][str(n)] = {"clients": n, "concurrency": args.concurrency, "runs": runs}
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
    run.add_argument("--storm", action="store_true",
                     help="a connect storm instead of messages (see the storm command); "
                          "--profile and --perf then record the connect phase")
    run.add_argument("--concurrency", type=int, default=100,
                     help="handshakes in flight at a time while connecting (100)")
    run.set_defaults(func=cmd_run)

    compare = sub.add_parser("compare", help="several servers, the same load, side by side")
    compare.add_argument("--servers", default=",".join(WS_SERVERS),
                         help=f"comma-separated, of {', '.join(SERVERS)}")
    _load_args(compare)
    compare.set_defaults(func=cmd_compare)

    storm = sub.add_parser("storm", help="connect cost: N WebSocket clients connect, the "
                                         "server's CPU time per connection, side by side")
    storm.add_argument("--servers", default="raw,atmosphere",
                       help="comma-separated, of SERVER or SERVER@REV (raw,atmosphere)")
    storm.add_argument("--clients", "-n", default="3000,10000",
                       help="comma-separated sizes N (3000,10000)")
    storm.add_argument("--concurrency", type=int, default=100,
                       help="handshakes in flight at a time (100, as the other runs connect)")
    storm.add_argument("--reference", default="raw", help="the server of the ratio columns")
    storm.add_argument("--markdown", type=Path, default=None, help="write the tables here")
    storm.add_argument("--json", type=Path, default=None, help="write every number here")
    storm.add_argument("--quiet", "-q", action="store_true")
    _machine_args(storm)
    storm.set_defaults(func=cmd_storm)

    from .backplane import add_parser as add_backplane
    add_backplane(sub)
    from .soak import add_parser as add_soak
    add_soak(sub)

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
