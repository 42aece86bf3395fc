"""The Redis backplane under load: flask-atmosphere with its memory backplane
(one process, the default) against the same relay with the Redis backplane,
in one process and in two processes sharing the clients; and long-polling
without sticky sessions: each poll to any of three processes, or always to
one that does not hold the client.

    python -m bench backplane                      # every scenario, the default setups
    python -m bench backplane --only longpoll --setups redis,redis-3p,redis-2p,redis-2p-away
    python -m bench backplane --only fanout --repeat 3 --wait-quiet 20
    python -m bench backplane --quick              # toy scale (the smoke test)

Each run starts its own ``redis-server`` on a free 127.0.0.1 port, without
persistence (``--save '' --appendonly no``), pinned with the server
processes to the server's core, and stops it afterwards. See bench/README.md,
"Backplane".
"""
from __future__ import annotations

import functools
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import __main__ as cli
from .harness import (Server, _cores, _pinned, _rss, default_log_dir, drive, free_port, terminate,
                      loadgen_command, snapshot, wait_for_quiet)


@dataclass(frozen=True)
class Setup:
    """How the relay is served: ``processes`` copies of ``server`` (a file
    in bench/servers/), sharing a Redis when ``redis``. The sender connects
    to the first process; the receivers to each in turn. ``poll_to``: where
    each poll of a long-polling receiver goes (``bench.loadgen --poll-to``)."""

    name: str
    server: str
    processes: int
    redis: bool
    what: str
    poll_to: str = "owner"


SETUPS = {s.name: s for s in (
    Setup("memory", "atmosphere", 1, False, "one process, the memory backplane (the default)"),
    Setup("redis", "atmosphere_redis", 1, True, "one process, the Redis backplane"),
    Setup("redis-2p", "atmosphere_redis", 2, True,
          "two processes, the Redis backplane, half the receivers on each, the sender on "
          "the first; both on the server's core"),
    Setup("redis-3p", "atmosphere_redis", 3, True,
          "three processes, the Redis backplane, the receivers opened on each in turn, each "
          "poll sent to one drawn at random (no sticky sessions: two polls in three are "
          "forwarded to the holder); all on the server's core", poll_to="any"),
    Setup("redis-2p-away", "atmosphere_redis", 2, True,
          "as redis-2p, but every poll is sent to the process that does not hold its "
          "client, which forwards it to the holder", poll_to="away"),
)}
#: The setups run when --setups is not given.
DEFAULT_SETUPS = "memory,redis,redis-2p"

#: (name, what it shows, load)
SCENARIOS = [
    ("fanout", "N=1000 as fast as a window of 8 allows: max fan-out",
     dict(clients=1000, messages=600, rate=0, window=8)),
    ("latency", "N=1000 at 10 broadcasts/s: publish-to-delivery latency",
     dict(clients=1000, messages=100, rate=10)),
    ("latency-100", "N=100 at 10 broadcasts/s: latency with little fan-out, i.e. mostly "
     "the backplane's own", dict(clients=100, messages=100, rate=10)),
    ("longpoll", "N=200 long-polling receivers, window 20: deliveries/s, latency and CPU per "
     "poll, polls answered by the holder or forwarded to it",
     dict(clients=200, messages=2000, window=20, transport="poll")),
    ("longpoll-rate", "N=100 long-polling receivers at 5 broadcasts/s, the same load for "
     "every setup: latency and CPU per poll", dict(clients=100, messages=150, rate=5,
                                                   transport="poll")),
]

#: --quick: the same at toy scale
QUICK = {"fanout": dict(clients=20, messages=60, rate=0, window=4),
         "latency": dict(clients=20, messages=20, rate=20),
         "latency-100": dict(clients=5, messages=20, rate=20),
         "longpoll": dict(clients=10, messages=60, window=4, transport="poll"),
         "longpoll-rate": dict(clients=5, messages=20, rate=20, transport="poll")}


class RedisServer:
    """A throw-away ``redis-server`` on a free 127.0.0.1 port, no
    persistence, pinned to ``core``; its output goes to ``log_path``."""

    def __init__(self, core: int | None, log_path: Path, timeout: float = 10.0):
        self.port = free_port()
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(log_path.parent)],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=_pinned(core))
        self._wait_ready(timeout)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer within {timeout}s")

    def stop(self) -> None:
        terminate(self.proc)
        self._log.close()


def run_setup(setup: Setup, *, clients: int, messages: int, rate: float = 0, window: int = 0,
              transport: str = "ws", size: int = 150, idle_timeout: float = 5.0,
              max_seconds: float = 120.0, wait_quiet: float = 0.0, rev: str | None = None,
              verbose: bool = True, log_dir: Path | None = None, patched: bool = False) -> dict:
    """One setup, one load: start Redis (if the setup has it) and the
    server processes on the server's core (``patched``: with the standard
    library patched by gevent, as deployed), drive them from the load
    generator on the other core, stop everything; the load generator's
    numbers (server CPU summed over the processes, Redis's apart)."""
    server_core, loadgen_core = _cores()
    background = wait_for_quiet(wait_quiet, verbose)
    log_dir = log_dir or default_log_dir()
    package, commit = snapshot(rev) if rev else (None, None)
    redis = None
    servers: list[Server] = []
    try:
        if setup.redis:
            redis = RedisServer(server_core, log_dir / f"{setup.name}.redis.log")
        env = {"BENCH_REDIS_URL": redis.url} if redis else {}
        if patched:
            env["BENCH_PATCHED"] = "1"
        for k in range(setup.processes):
            servers.append(Server(setup.server, server_core, log_dir / f"{setup.name}-{k}.log",
                                  package, env))
        command = loadgen_command(
            servers[0].port, [s.pid for s in servers], "plain", transport=transport,
            clients=clients,
            messages=messages, rate=rate, window=window, size=size, idle_timeout=idle_timeout,
            max_seconds=max_seconds,
            receiver_ports=[s.port for s in servers] if len(servers) > 1 else None,
            aux_pids=[redis.pid] if redis else None,
            poll_to=setup.poll_to if transport == "poll" else "owner")
        limit = 120 + max_seconds + idle_timeout + clients / 20
        result = drive(command, setup.name, loadgen_core, log_dir, limit, None, verbose)
        result.update(server=setup.name, processes=setup.processes, redis=setup.redis,
                      patched=patched,
                      server_core=server_core, loadgen_core=loadgen_core,
                      background_busy=background, package_rev=commit or "working tree",
                      server_rss_end_kib=[_rss(s.pid) for s in servers])
        return result
    finally:
        for server in servers:
            server.stop()
        if redis is not None:
            redis.stop()


# -- the table -------------------------------------------------------------------

def backplane_table(runs: dict[str, list[dict]], reference: str = "memory") -> str:
    """A markdown table: one row per setup, the median of its rounds
    (interleaved with the other setups'), ratios to ``reference`` taken
    round by round (the median of the ratios)."""
    ref = runs.get(reference)
    head = ["setup", "procs", "deliv/s", f"×{reference}", "p50 ms", "p90 ms", "p99 ms",
            f"p50 ×{reference}", "CPU µs/deliv (servers)", f"×{reference}",
            "Redis CPU µs/deliv", "srv CPU", "loadgen CPU", "lost/dup/ooo", "rounds: deliv/s"]
    rows = [head, ["---"] * len(head)]

    def ratio(rs: list[dict], value) -> str:
        if not ref:
            return "-"
        ratios = [value(r) / value(b) for r, b in zip(rs, ref, strict=False)
                  if value(r) is not None and value(b)]
        return cli._fmt(cli._median(ratios), 2) if ratios else "-"

    def med(rs: list[dict], value, digits: int = 1) -> str:
        return cli._fmt(cli._median([value(r) for r in rs]), digits)

    def p50(r: dict):
        return r["latency_ms"]["p50"]

    polls = any(r.get("polls_run") for rs in runs.values() for r in rs)
    if polls:  # long-polling: what a poll costs, the servers' CPU and Redis's together
        head[-1:-1] = ["polls", "CPU µs/poll (servers + Redis)", f"×{reference}"]
        rows[1] = ["---"] * len(head)

    def per_poll(r: dict):
        if not r.get("polls_run"):
            return None
        return r["server_cpu_us_per_poll"] + (r.get("aux_cpu_us_per_poll") or 0)

    for name, rs in runs.items():
        row = [
            name, str(rs[0]["processes"]),
            med(rs, lambda r: r["deliveries_per_s"], 0), ratio(rs, lambda r: r["deliveries_per_s"]),
            med(rs, p50, 2), med(rs, lambda r: r["latency_ms"]["p90"], 2),
            med(rs, lambda r: r["latency_ms"]["p99"], 2), ratio(rs, p50),
            med(rs, lambda r: r["server_cpu_us_per_delivery"], 2),
            ratio(rs, lambda r: r["server_cpu_us_per_delivery"]),
            med(rs, lambda r: r.get("aux_cpu_us_per_delivery"), 3) if rs[0]["redis"] else "-",
            f'{100 * cli._median([r["server_cpu_util"] for r in rs]):.0f}%',
            f'{100 * cli._median([r["loadgen_cpu_util"] for r in rs]):.0f}%',
            "/".join(str(sum(r[k] for r in rs)) for k in ("lost", "duplicates", "out_of_order")),
            ", ".join(cli._fmt(r["deliveries_per_s"], 0) for r in rs),
        ]
        if polls:
            row[-1:-1] = [med(rs, lambda r: r.get("polls_run"), 0), med(rs, per_poll, 1),
                          ratio(rs, per_poll)]
        rows.append(row)
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def backplane_notes(runs: dict[str, list[dict]]) -> str:
    """What made a run less trustworthy (see ``notes`` in the CLI), per round."""
    labelled = []
    for name, rs in runs.items():
        for k, r in enumerate(rs, 1):
            labelled.append(dict(r, server=f"{name}, round {k}" if len(rs) > 1 else name))
    return cli.notes(labelled)


def command_line(args, scenario: str) -> str:
    cmd = ["python -m bench backplane", "--only", scenario, "--setups", args.setups]
    if args.quick:
        cmd.append("--quick")
    if args.patched:
        cmd.append("--patched")
    return " ".join(cmd + cli.run_flags(args))


# -- the command -------------------------------------------------------------------

def cmd_backplane(args) -> None:
    names = args.setups.split(",")
    unknown = [n for n in names if n not in SETUPS]
    if unknown:
        raise SystemExit(f"unknown setup {unknown[0]!r}; one of {', '.join(SETUPS)}")
    chosen = args.only.split(",") if args.only else [name for name, *_ in SCENARIOS]
    verbose = not args.quiet
    info = cli._machine(args)
    info["redis"] = _redis_version()
    title = "".join(f" ({word})" for flag, word in ((args.quick, "quick"),
                                                     (args.patched, "patched")) if flag)
    report = [f"# Backplane{title}", "",
              cli._machine_line(info) + f"; {info['redis']}", ""]
    saved: dict = {"machine": info, "scenarios": {}}
    for scenario, what, load in SCENARIOS:
        if scenario not in chosen:
            continue
        load = dict(QUICK[scenario] if args.quick else load)
        runs: dict[str, list[dict]] = {name: [] for name in names}
        for attempt in range(max(1, args.repeat)):
            for name in names:
                if verbose:
                    print(f"== {name}: {scenario}, {cli.describe(load)}"
                          + (f" (round {attempt + 1} of {args.repeat})" if args.repeat > 1 else ""),
                          file=sys.stderr, flush=True)
                result = cli.run_retrying(
                    functools.partial(run_setup, SETUPS[name], verbose=verbose,
                                      wait_quiet=args.wait_quiet, rev=args.rev,
                                      patched=args.patched, **load),
                    args.retry_disturbed, args.max_disturbance, verbose)
                runs[name].append(result)
                time.sleep(1)  # let the sockets of the last run go
        section = [f"## {scenario}: {what}", "", f"`{command_line(args, scenario)}`", "",
                   backplane_table(runs, names[0]), ""]
        extra = backplane_notes(runs)
        if extra:
            section += [extra, ""]
        print("\n".join(section), flush=True)
        report += section
        saved["scenarios"][scenario] = {"load": load, "runs": runs}
    saved["setups"] = {name: SETUPS[name].__dict__ for name in names}
    report += ["Setups:", ""] + [f"- `{n}`: {SETUPS[n].what}" for n in names] + [""]
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text("\n".join(report) + "\n")
        print(f"report written to {args.markdown}", file=sys.stderr)
    cli._save(args.json, saved)


def _redis_version() -> str:
    try:
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "redis-server ?"
    version = next((p.split("=", 1)[1] for p in out.split() if p.startswith("v=")), "?")
    return f"redis-server {version}"


def add_parser(sub) -> None:
    """The ``backplane`` command of ``python -m bench``."""
    parser = sub.add_parser("backplane", help="the Redis backplane against the memory one, "
                                              "one process and two")
    parser.add_argument("--setups", default=DEFAULT_SETUPS,
                        help=f"comma-separated, of {', '.join(SETUPS)}; the first is the "
                             "reference of the ratio columns")
    parser.add_argument("--only", default=None,
                        help="comma-separated scenarios: " + ", ".join(n for n, *_ in SCENARIOS))
    parser.add_argument("--quick", action="store_true", help="toy scale (a smoke run)")
    parser.add_argument("--patched", action="store_true",
                        help="the servers patch the standard library with gevent first, as a "
                             "deployed app does (flask atmosphere run, the gunicorn worker); "
                             "the Redis threads are then greenlets")
    parser.add_argument("--markdown", type=Path, default=None, help="write the tables here")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    parser.add_argument("--quiet", "-q", action="store_true")
    cli._machine_args(parser)
    parser.set_defaults(func=cmd_backplane)


if __name__ == "__main__":
    sys.exit("run it as python -m bench backplane")
