"""The load generator: one process, asyncio on uvloop, picows for WebSocket
clients and aiohttp for long-polling clients.

    python -m bench.loadgen --port PORT --server-pid PID --protocol plain \
        --clients 1000 --messages 2000 --rate 100

It connects one sender and N receivers to a server started by the harness
(``bench/harness.py``), sends M stamped JSON messages through the sender at a
fixed rate or as fast as a window of W in-flight messages allows, and has
every receiver check and time what it gets. It reads the server's RSS and CPU
time from ``/proc/<pid>``. It prints its progress on stderr (lines starting
with ``phase:``, which the harness watches to start a profiler) and one JSON
object with every number on the last line of stdout.

Everything is bounded: M messages, at most ``--max-seconds`` of sending, and
the drain after the last send ends once every message has reached every
receiver or nothing arrived for ``--idle-timeout`` seconds.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import resource
import sys
import time
from array import array

perf = time.perf_counter
loads = json.loads
#: the sequence number and send time of a message, found without a full JSON
#: parse (json.loads was a third of the load generator's time per delivery);
#: every relay here keeps the key order, and Socket.IO's JSON has spaces
_STAMP = re.compile(rb'"seq": ?(-?[0-9]+), ?"t": ?([0-9.]+)')

#: latency histogram: buckets of 10 us below 1 s, of 1 ms from 1 s to 100 s;
#: the last one catches everything slower
_FINE = 100_000            # buckets per second below 1 s
_COARSE = 1_000            # buckets per second from 1 s
_LAST_BUCKET = _FINE + 99 * _COARSE
_PROBE = -1


def _bucket(latency: float) -> int:
    if latency < 1.0:
        return int(latency * _FINE) if latency > 0 else 0
    bucket = _FINE + int((latency - 1.0) * _COARSE)
    return bucket if bucket < _LAST_BUCKET else _LAST_BUCKET


def _bucket_top_ms(bucket: int) -> float:
    """The upper edge of a bucket, in ms."""
    if bucket < _FINE:
        return (bucket + 1) * 1000 / _FINE
    return 1000.0 + (bucket - _FINE + 1) * 1000 / _COARSE


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


# -- the server process, seen through /proc ------------------------------------

class ServerProc:
    """RSS and CPU time of the server process (all its threads); of several
    processes together (``--server-pid A,B``: a server of two processes),
    their sums."""

    def __init__(self, pid: int | list[int]):
        self.pids = [pid] if isinstance(pid, int) else list(pid)
        self.pid = self.pids[0]
        self.tick = os.sysconf("SC_CLK_TCK")

    def rss_kib(self) -> int:
        return sum(self._rss_kib(pid) for pid in self.pids)

    @staticmethod
    def _rss_kib(pid: int) -> int:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def cpu_s(self) -> float:
        return sum(self.cpu_each_s())

    def cpu_each_s(self) -> list[float]:
        """Each process's CPU time (user + system), in seconds."""
        out = []
        for pid in self.pids:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            # fields[0] is field 3 (state); utime and stime are fields 14 and 15
            out.append((int(fields[11]) + int(fields[12])) / self.tick)
        return out


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def core_times() -> dict[int, tuple[float, float]]:
    """(busy, total) seconds of each core since boot, from /proc/stat."""
    tick = os.sysconf("SC_CLK_TCK")
    cores = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *values = line.split()
                values = [int(v) for v in values]
                idle = values[3] + values[4]  # idle + iowait
                total = sum(values[:8])       # without guest time (counted in user)
                cores[int(name[3:])] = ((total - idle) / tick, total / tick)
    return cores


# -- the run's book-keeping ----------------------------------------------------

class Run:
    """What every receiver reports to: counts, order, duplicates, latency."""

    def __init__(self, n: int, m: int):
        self.n = n
        self.m = m
        self.counts = array("I", bytes(4 * m))  # receivers that got message i
        self.hist = array("I", bytes(4 * (_LAST_BUCKET + 1)))
        self.max_latency = 0.0
        self.deliveries = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.completed = 0         # messages that reached all n receivers
        self.last_delivery = 0.0
        self.first_delivery = 0.0
        self.ready = 0             # receivers that saw a probe
        self.probe_frames = 0      # probe frames received, repeats included
        self.ready_at = None
        self.ready_event = asyncio.Event()
        self.progress = asyncio.Event()
        self.waiting = False
        self.disconnects = 0
        self.errors = 0
        self.measuring = False

    def deliver(self, receiver, seq: int, sent: float) -> None:
        now = perf()
        if seq < 0:  # a readiness probe
            self.probe_frames += 1
            if not receiver.ready:
                receiver.ready = True
                self.ready += 1
                if self.ready >= self.n:
                    self.ready_at = now
                    self.ready_event.set()
            return
        seen = receiver.seen
        if seen[seq]:
            self.duplicates += 1
            return
        seen[seq] = 1
        latency = now - sent
        if 0.0 <= latency < 1.0:
            self.hist[int(latency * _FINE)] += 1
        else:
            self.hist[_bucket(latency)] += 1
        if latency > self.max_latency:
            self.max_latency = latency
        if seq < receiver.top:
            self.out_of_order += 1
        else:
            receiver.top = seq
        count = self.counts[seq] + 1
        self.counts[seq] = count
        if not self.deliveries:
            self.first_delivery = now
        self.deliveries += 1
        self.last_delivery = now
        if count == self.n:
            self.completed += 1
            if self.waiting:
                self.progress.set()

    def percentiles(self, *ps: float) -> list[float | None]:
        total = sum(self.hist)
        if not total:
            return [None for _ in ps]
        wanted = sorted((p, i) for i, p in enumerate(ps))
        out: list[float | None] = [None] * len(ps)
        running, k = 0, 0
        for bucket, count in enumerate(self.hist):
            if not count:
                continue
            running += count
            while k < len(wanted) and running >= wanted[k][0] / 100 * total:
                out[wanted[k][1]] = round(_bucket_top_ms(bucket), 2)
                k += 1
            if k == len(wanted):
                break
        return out


# -- WebSocket clients (picows) ------------------------------------------------

def make_ws_listener_class():
    from picows import WSListener, WSMsgType

    TEXT, CLOSE = WSMsgType.TEXT, WSMsgType.CLOSE

    class WsClient(WSListener):
        """One WebSocket client: a receiver, or the sender (``run`` None).

        ``protocol`` is ``"plain"`` (JSON text frames) or ``"socketio"``
        (Engine.IO v4 / Socket.IO v5 framing: ``0`` open, ``40`` connect,
        ``42[event,data]`` messages, ping ``2`` answered with ``3``)."""

        def __init__(self, run: Run | None, protocol: str):
            super().__init__()
            self.run = run
            self.socketio = protocol == "socketio"
            self.transport = None
            self.opened = asyncio.get_running_loop().create_future()
            self.ready = False
            self.seen = None
            self.top = -1

        def on_ws_connected(self, transport):
            self.transport = transport
            if not self.socketio and not self.opened.done():
                self.opened.set_result(None)

        def on_ws_frame(self, transport, frame):
            msg_type = frame.msg_type
            if msg_type is TEXT:
                data = frame.get_payload_as_bytes()
                try:
                    if self.socketio:
                        if data.startswith(b"42"):
                            if self.run is not None:
                                stamp = _STAMP.search(data)
                                self.run.deliver(self, int(stamp[1]), float(stamp[2]))
                        elif data == b"2":
                            transport.send(TEXT, b"3")
                        elif data.startswith(b"40"):
                            if not self.opened.done():
                                self.opened.set_result(None)
                        elif data.startswith(b"0"):
                            transport.send(TEXT, b"40")
                    elif self.run is not None:
                        stamp = _STAMP.search(data)
                        self.run.deliver(self, int(stamp[1]), float(stamp[2]))
                except Exception as exc:  # a frame we cannot read: count it
                    if self.run is not None:
                        self.run.errors += 1
                        if self.run.errors <= 3:
                            log(f"bad frame {data[:80]!r}: {exc!r}")
            elif msg_type is CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()

        def on_ws_disconnected(self, transport):
            if self.run is not None:
                self.run.disconnects += 1
            if not self.opened.done():
                self.opened.set_exception(ConnectionError("closed before it opened"))

    return WsClient


async def ws_client(url: str, run: Run | None, protocol: str, cls, timeout: float):
    from picows import ws_connect
    transport, listener = await ws_connect(
        lambda: cls(run, protocol), url, websocket_handshake_timeout=timeout,
        read_buffer_init_size=4096, enable_auto_pong=True)
    await asyncio.wait_for(listener.opened, timeout)
    return listener


# -- long-polling clients (aiohttp) --------------------------------------------

class Poller:
    """A long-polling receiver; ``protocol`` ``plain`` speaks the Atmosphere
    protocol (handshake, tracking id, length-framed messages), ``socketio``
    Engine.IO v4 polling."""

    def __init__(self, run: Run, protocol: str, session, base: str,
                 bases: list[str] | None = None, poll_to: str = "owner"):
        self.run = run
        self.protocol = protocol
        self.session = session
        self.base = base
        #: where its polls go (``--poll-to``): the base that opened it, the
        #: next of ``bases`` after it, or any of ``bases``, drawn per poll
        others = bases or [base]
        self.poll_bases = {"owner": [base], "any": others,
                           "away": [others[(others.index(base) + 1) % len(others)]]}[poll_to]
        self.ready = False
        self.seen = None
        self.top = -1
        self.url = None
        #: the cookies its first answer set (the resume key its client is
        #: bound to), sent with each poll: the session keeps none (one jar
        #: would mix the receivers' keys, and aiohttp's takes none from an IP)
        self.headers: dict[str, str] = {}
        self.polls = 0

    async def open(self) -> None:
        if self.protocol == "plain":
            url = (f"{self.base}/the-chat?X-Atmosphere-Transport=long-polling"
                   "&X-Atmosphere-Framework=5.0.0&X-atmo-protocol=true"
                   "&X-Atmosphere-TrackMessageSize=true&Content-Type=application/json")
            async with self.session.get(url + "&X-Atmosphere-tracking-id=0") as response:
                body = await response.text()
                cookies = "; ".join(f"{name}={morsel.value}"
                                    for name, morsel in response.cookies.items())
            if cookies:
                self.headers = {"Cookie": cookies}
            uuid = body.split("|")[1]
            self.url = url + "&X-Atmosphere-tracking-id=" + uuid
        else:
            base = f"{self.base}/socket.io/?EIO=4&transport=polling"
            async with self.session.get(base) as response:
                body = await response.text()
            sid = loads(body[1:].split("\x1e")[0])["sid"]
            self.url = f"{base}&sid={sid}"
            async with self.session.post(self.url, data=b"40") as response:
                await response.read()

    async def loop(self, stop: asyncio.Event) -> None:
        try:
            await self._loop(stop)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.run.errors += 1
            self.run.disconnects += 1
            if self.run.errors <= 3:
                log(f"a poller failed: {exc!r}")

    async def _loop(self, stop: asyncio.Event) -> None:
        run, session, url = self.run, self.session, self.url
        plain = self.protocol == "plain"
        path = url.removeprefix(self.base)
        bases, headers = self.poll_bases, self.headers
        while not stop.is_set():
            if len(bases) > 1 or bases[0] != self.base:
                url = random.choice(bases) + path
            async with session.get(url, headers=headers) as response:
                body = await response.text()
                status = response.status
            self.polls += 1
            if status != 200:
                run.errors += 1
                log(f"poll answered {status}: {body[:100]!r}")
                return
            if plain:
                position = 0
                while position < len(body):
                    bar = body.index("|", position)
                    length = int(body[position:bar])
                    text = body[bar + 1:bar + 1 + length]
                    position = bar + 1 + length
                    if text != "X":
                        stamp = _STAMP.search(text.encode())
                        run.deliver(self, int(stamp[1]), float(stamp[2]))
            else:
                for packet in body.split("\x1e"):
                    if packet.startswith("42"):
                        stamp = _STAMP.search(packet.encode())
                        run.deliver(self, int(stamp[1]), float(stamp[2]))
                    elif packet == "2":
                        async with session.post(url, data=b"3") as response:
                            await response.read()
                    elif packet == "1":
                        run.disconnects += 1
                        return


# -- the run -------------------------------------------------------------------

def message_template(size: int, protocol: str) -> bytes:
    """A ``%``-template of the JSON message, padded to about ``size`` bytes
    (with a sequence number of 4 digits and a timestamp of 6 decimals)."""
    head = '{"seq":%d,"t":%.6f,"author":"bench","message":"'
    sample = len((head % (1000, 12345.123456)) + '"}')
    pad = "x" * max(0, size - sample)
    body = head + pad + '"}'
    if protocol == "socketio":
        body = '42["msg",' + body + "]"
    return body.encode()


async def gather_bounded(factories, concurrency: int):
    """Run the coroutine factories at most ``concurrency`` at a time; return
    (results, exceptions) in order of completion."""
    semaphore = asyncio.Semaphore(concurrency)
    results, failures = [], []

    async def one(factory):
        async with semaphore:
            try:
                results.append(await factory())
            except Exception as exc:
                failures.append(exc)

    await asyncio.gather(*(one(f) for f in factories))
    return results, failures


async def main(args) -> dict:
    from picows import WSMsgType
    TEXT = WSMsgType.TEXT

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, args.clients + 1024))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if args.clients + 64 > want:
        raise SystemExit(f"the file-descriptor limit {hard} is too low for {args.clients} clients")

    if args.poll_to != "owner" and (args.transport, args.protocol) != ("poll", "plain"):
        raise SystemExit("--poll-to is for Atmosphere long-polling (--transport poll, "
                         "--protocol plain)")
    server = ServerProc(args.server_pid)
    aux = ServerProc(args.aux_pid) if args.aux_pid else None
    WsClient = make_ws_listener_class()
    protocol = args.protocol
    host = f"127.0.0.1:{args.port}"
    ws_url = _ws_url(host, protocol)
    # the receivers' servers, in turn (``--receiver-ports``); the sender's is --port
    receiver_hosts = [f"127.0.0.1:{port}" for port in args.receiver_ports] or [host]
    turn = iter(range(10 ** 9))

    def next_host() -> str:
        return receiver_hosts[next(turn) % len(receiver_hosts)]
    n, m = args.clients, args.messages
    run = Run(n, m)
    out: dict = {"clients": n, "messages": m, "rate": args.rate, "window": args.window,
                 "transport": args.transport, "protocol": protocol}

    # the sender first: it also warms the server up (first request, imports)
    sender = await ws_client(ws_url, None, protocol, WsClient, args.connect_timeout)
    if args.storm:
        return await storm(args, out, server, sender, run, ws_url, WsClient)
    await asyncio.sleep(args.settle)
    rss_before = server.rss_kib()
    cpu_connect0 = server.cpu_s()

    log(f"phase: connect {n} {args.transport} receivers")
    session = None
    pollers: list[Poller] = []
    connect_times: list[float] = []
    t_connect = perf()
    if args.transport == "ws":
        async def connect_one():
            start = perf()
            listener = await ws_client(_ws_url(next_host(), protocol), run, protocol, WsClient,
                                       args.connect_timeout)
            connect_times.append(perf() - start)
            return listener
        receivers, failures = await gather_bounded([connect_one] * n, args.connect_concurrency)
    else:
        import aiohttp
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
            cookie_jar=aiohttp.DummyCookieJar(),  # each poller keeps its own (Poller.headers)
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=args.connect_timeout,
                                          sock_read=120))

        async def open_one():
            start = perf()
            poller = Poller(run, protocol, session, f"http://{next_host()}",
                            [f"http://{host}" for host in receiver_hosts], args.poll_to)
            await poller.open()
            connect_times.append(perf() - start)
            return poller
        receivers, failures = await gather_bounded([open_one] * n, args.connect_concurrency)
        pollers = receivers
    connect_wall = perf() - t_connect
    out["connect"] = {
        "wall_s": round(connect_wall, 3),
        "per_s": round(len(receivers) / connect_wall, 1) if connect_wall else None,
        "p50_ms": round(_pct(connect_times, 50) * 1000, 2) if connect_times else None,
        "p99_ms": round(_pct(connect_times, 99) * 1000, 2) if connect_times else None,
        "failures": len(failures),
    }
    if failures:
        log(f"{len(failures)} connections failed, e.g. {failures[0]!r}")
    run.n = n = len(receivers)
    if not n:
        raise SystemExit("no receiver connected")

    stop_polling = asyncio.Event()
    poll_tasks = [asyncio.ensure_future(p.loop(stop_polling)) for p in pollers]

    await asyncio.sleep(args.settle)
    rss_after = server.rss_kib()
    out["rss"] = {"before_kib": rss_before, "after_kib": rss_after,
                  "per_connection_bytes": round((rss_after - rss_before) * 1024 / n)}
    log(f"phase: connected {n} in {connect_wall:.2f}s, RSS {rss_before} -> {rss_after} KiB")

    # readiness: probes until every receiver got one (all registered, paths warm)
    probe = message_template(args.size, protocol) % (_PROBE, perf())
    deadline = perf() + args.connect_timeout + n / 200
    while run.ready < n and perf() < deadline:
        sender.transport.send(TEXT, probe)
        try:
            await asyncio.wait_for(run.ready_event.wait(), 1.0)
        except asyncio.TimeoutError:
            pass
    out["not_ready"] = n - run.ready
    # ready: from the first connection attempt until every receiver got a probe,
    # i.e. until the server really has them all (a handshake can come first)
    out["connect"]["ready_s"] = (round(run.ready_at - t_connect - args.settle, 3)
                                 if run.ready_at else None)
    out["connect"]["server_cpu_us_per_connection"] = round(
        (server.cpu_s() - cpu_connect0) * 1e6 / n, 1)
    if run.ready < n:
        log(f"{n - run.ready} receivers never got a probe")
    for receiver in receivers:
        receiver.seen = bytearray(m)
    await asyncio.sleep(0.5)  # let the last probes drain

    template = message_template(args.size, protocol)
    out["message_bytes"] = len(template % (m // 2, perf())) - (len(b'42["msg",]') if protocol == "socketio" else 0)
    rate, window = args.rate, args.window
    if not rate and not window:
        window = 10
    stalled = False
    lag_max = 0.0

    log(f"phase: run {m} messages, rate {rate or 'max'}, window {window or '-'}")
    polls0 = sum(p.polls for p in pollers)
    cores0, cpu0, own0 = core_times(), server.cpu_each_s(), own_cpu_s()
    aux0 = aux.cpu_s() if aux else 0.0
    t0 = perf()
    end_by = t0 + args.max_seconds
    transport = sender.transport
    sent = 0
    for i in range(m):
        if rate:
            due = t0 + i / rate
            delay = due - perf()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                lag_max = max(lag_max, -delay)
        if window:
            while i - run.completed >= window:
                run.progress.clear()
                run.waiting = True
                try:
                    await asyncio.wait_for(run.progress.wait(), args.idle_timeout)
                except asyncio.TimeoutError:
                    if perf() - max(run.last_delivery, t0) >= args.idle_timeout:
                        stalled = True
                        break
                finally:
                    run.waiting = False
            if stalled:
                break
        if perf() > end_by:
            stalled = True
            break
        transport.send(TEXT, template % (i, perf()))
        sent += 1
        if not rate and i % 64 == 63:
            await asyncio.sleep(0)  # let the receivers read
    t_sent = perf()
    # drain: until everything arrived, or nothing arrived for idle_timeout
    while run.completed < sent:
        await asyncio.sleep(0.02)
        if perf() - max(run.last_delivery, t_sent) >= args.idle_timeout:
            break
    t_end = run.last_delivery if run.deliveries else perf()
    cpu1, own1, cores1 = server.cpu_each_s(), own_cpu_s(), core_times()
    aux1 = aux.cpu_s() if aux else 0.0
    polls = sum(p.polls for p in pollers) - polls0
    log("phase: done")
    wall = max(t_end - t0, 1e-9)
    server_cpu = sum(cpu1) - sum(cpu0)
    expected = sent * n
    p50, p90, p99, p999 = run.percentiles(50, 90, 99, 99.9)
    out.update({
        "sent": sent,
        "expected_deliveries": expected,
        "deliveries": run.deliveries,
        "lost": expected - run.deliveries,
        "duplicates": run.duplicates,
        "out_of_order": run.out_of_order,
        "disconnects": run.disconnects,
        "errors": run.errors,
        "stalled": stalled,
        "send_s": round(t_sent - t0, 3),
        "duration_s": round(wall, 3),
        "sender_lag_max_ms": round(lag_max * 1000, 2),
        "deliveries_per_s": round(run.deliveries / wall, 1),
        "messages_per_s": round(sent / wall, 2),
        "latency_ms": {"p50": p50, "p90": p90, "p99": p99, "p99.9": p999,
                       "max": round(run.max_latency * 1000, 2)},
        "server_cpu_s": round(server_cpu, 3),
        "server_cpu_util": round(server_cpu / wall, 3),
        "server_cpu_us_per_delivery": round(server_cpu * 1e6 / run.deliveries, 2)
        if run.deliveries else None,
        "loadgen_cpu_s": round(own1 - own0, 3),
        "loadgen_cpu_util": round((own1 - own0) / wall, 3),
        "loadgen_cpu_us_per_delivery": round((own1 - own0) * 1e6 / run.deliveries, 2)
        if run.deliveries else None,
        "core_busy": {str(core): round((cores1[core][0] - cores0[core][0])
                                       / max(cores1[core][1] - cores0[core][1], 1e-9), 3)
                      for core in cores1 if core in cores0},
    })
    if len(server.pids) > 1:
        out["server_cpu_s_each"] = [round(b - a, 3) for a, b in zip(cpu0, cpu1, strict=True)]
    if aux is not None:
        out["aux_cpu_s"] = round(aux1 - aux0, 3)
        out["aux_cpu_us_per_delivery"] = (round((aux1 - aux0) * 1e6 / run.deliveries, 3)
                                          if run.deliveries else None)
    if pollers:
        out["polls"] = sum(p.polls for p in pollers)
        # the polls answered during the run, and what each cost the servers (and Redis)
        out["polls_run"] = polls
        out["server_cpu_us_per_poll"] = round(server_cpu * 1e6 / polls, 2) if polls else None
        if aux is not None:
            out["aux_cpu_us_per_poll"] = round((aux1 - aux0) * 1e6 / polls, 2) if polls else None
    # tidy up, without waiting for the server
    stop_polling.set()
    for task in poll_tasks:
        task.cancel()
    await asyncio.gather(*poll_tasks, return_exceptions=True)
    if session is not None:
        await session.close()
    if args.transport == "ws":
        for receiver in receivers:
            if receiver.transport is not None:
                receiver.transport.disconnect(graceful=False)
    sender.transport.disconnect(graceful=False)
    return out


# -- the connect storm ---------------------------------------------------------

async def storm(args, out: dict, server: ServerProc, sender, run: Run, ws_url: str,
                WsClient) -> dict:
    """``--storm``: what connecting costs, nothing else.

    N WebSocket receivers connect (``--connect-concurrency`` handshakes at a
    time, as fast as this process can); then probes go out through the
    sender every ``--probe-interval`` until every receiver got one, i.e. the
    server has really registered them all. The server's CPU time is read
    before the first attempt, when the last handshake is done, and when the
    last receiver got its probe; what the probes themselves cost the server
    (one delivery per registered receiver per probe) is measured afterwards
    with more probes, each awaited at every receiver, and taken off.
    """
    from picows import WSMsgType
    TEXT = WSMsgType.TEXT
    n = args.clients
    protocol = args.protocol
    probe = message_template(args.size, protocol) % (_PROBE, perf())

    # the profiler (``--profile``) starts here: the settle leaves it time to attach
    log("phase: profile-start (storm)")
    await asyncio.sleep(args.settle)
    rss0 = server.rss_kib()
    cores0, cpu0, own0 = core_times(), server.cpu_s(), own_cpu_s()

    log(f"phase: connect {n} ws receivers (storm, {args.connect_concurrency} at a time)")
    connect_times: list[float] = []

    async def connect_one():
        start = perf()
        listener = await ws_client(ws_url, run, protocol, WsClient, args.connect_timeout)
        connect_times.append(perf() - start)
        return listener

    t0 = perf()
    receivers, failures = await gather_bounded([connect_one] * n, args.connect_concurrency)
    t_hs = perf()
    cpu_hs, own_hs = server.cpu_s(), own_cpu_s()
    if failures:
        log(f"{len(failures)} connections failed, e.g. {failures[0]!r}")
    run.n = n = len(receivers)
    if not n:
        raise SystemExit("no receiver connected")

    probes = 0
    deadline = perf() + args.connect_timeout + n / 200
    while run.ready < n and perf() < deadline:
        sender.transport.send(TEXT, probe)
        probes += 1
        try:
            await asyncio.wait_for(run.ready_event.wait(), args.probe_interval)
        except asyncio.TimeoutError:
            pass
    t_ready = run.ready_at if run.ready_at else perf()
    cpu_ready, own_ready, cores1 = server.cpu_s(), own_cpu_s(), core_times()
    probe_frames_ready = run.probe_frames
    log("phase: profile-stop (storm)")
    log(f"phase: ready {run.ready} of {n} in {t_ready - t0:.2f}s "
        f"(handshakes {t_hs - t0:.2f}s, {probes} probes)")

    # what came after: deferred work of the server, the last probe's frames
    await asyncio.sleep(args.settle)
    cpu_settled = server.cpu_s()
    rss1 = server.rss_kib()

    # the probes' own cost per frame: more probes, each awaited at every receiver
    rounds = max(3, min(50, -(-50_000 // n)))
    frames0, cpu_c0 = run.probe_frames, server.cpu_s()
    for _ in range(rounds):
        target = run.probe_frames + n
        sender.transport.send(TEXT, probe)
        until = perf() + 10
        while run.probe_frames < target and perf() < until:
            await asyncio.sleep(0.002)
    probe_cpu = server.cpu_s() - cpu_c0
    frames = run.probe_frames - frames0
    per_frame = probe_cpu / frames if frames else 0.0

    wall_hs, wall_ready = max(t_hs - t0, 1e-9), max(t_ready - t0, 1e-9)
    connect_cpu = cpu_ready - cpu0
    probe_share = per_frame * probe_frames_ready
    out["storm"] = True
    out["connect"] = {
        "wall_s": round(wall_hs, 3),
        "ready_s": round(t_ready - t0, 3) if run.ready_at else None,
        "per_s": round(n / wall_hs, 1),
        "ready_per_s": round(n / wall_ready, 1) if run.ready_at else None,
        "p50_ms": round(_pct(connect_times, 50) * 1000, 2) if connect_times else None,
        "p99_ms": round(_pct(connect_times, 99) * 1000, 2) if connect_times else None,
        "failures": len(failures),
        "concurrency": args.connect_concurrency,
        "probes": probes,
        "probe_frames": probe_frames_ready,
        # the server's CPU time per connection (us)
        "server_cpu_us_handshakes": round((cpu_hs - cpu0) * 1e6 / n, 1),
        "server_cpu_us_ready_raw": round(connect_cpu * 1e6 / n, 1),
        "server_cpu_us_per_connection": round((connect_cpu - probe_share) * 1e6 / n, 1),
        "server_cpu_us_after_ready": round((cpu_settled - cpu_ready) * 1e6 / n, 1),
        "probe_cpu_us_per_frame": round(per_frame * 1e6, 2),
        "probe_calibration": {"probes": rounds, "frames": frames,
                              "server_cpu_s": round(probe_cpu, 3)},
        "server_cpu_s": round(connect_cpu, 3),
    }
    out["not_ready"] = n - run.ready
    out["rss"] = {"before_kib": rss0, "after_kib": rss1,
                  "per_connection_bytes": round((rss1 - rss0) * 1024 / n)}
    # the numbers every table reads, of the connect phase (first attempt to ready)
    out.update({
        "sent": 0, "deliveries": 0, "lost": 0, "duplicates": 0, "out_of_order": 0,
        "disconnects": run.disconnects, "errors": run.errors, "stalled": run.ready < n,
        "duration_s": round(wall_ready, 3),
        "server_cpu_s": round(connect_cpu, 3),
        "server_cpu_util": round(connect_cpu / wall_ready, 3),
        "loadgen_cpu_s": round(own_ready - own0, 3),
        "loadgen_cpu_util": round((own_ready - own0) / wall_ready, 3),
        "loadgen_cpu_util_handshakes": round((own_hs - own0) / wall_hs, 3),
        "server_cpu_util_handshakes": round((cpu_hs - cpu0) / wall_hs, 3),
        "core_busy": {str(core): round((cores1[core][0] - cores0[core][0])
                                       / max(cores1[core][1] - cores0[core][1], 1e-9), 3)
                      for core in cores1 if core in cores0},
    })
    log("phase: done")
    for receiver in receivers:
        if receiver.transport is not None:
            receiver.transport.disconnect(graceful=False)
    sender.transport.disconnect(graceful=False)
    return out


def _ws_url(host: str, protocol: str) -> str:
    if protocol == "socketio":
        return f"ws://{host}/socket.io/?EIO=4&transport=websocket"
    return f"ws://{host}/the-chat"


def _pids(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--server-pid", type=_pids, required=True,
                        help="the server's process id; PID,PID,...: a server of several "
                             "processes (CPU time and RSS are their sums)")
    parser.add_argument("--receiver-ports", type=_pids, default=[],
                        help="PORT,PORT,...: connect the receivers to these in turn "
                             "(the sender connects to --port); default: --port")
    parser.add_argument("--aux-pid", type=_pids, default=[],
                        help="PID,...: another process the server needs (redis-server): its "
                             "CPU time during the run is reported apart (aux_cpu_*)")
    parser.add_argument("--protocol", choices=["plain", "socketio"], default="plain")
    parser.add_argument("--transport", choices=["ws", "poll"], default="ws",
                        help="how the receivers connect (the sender always uses a WebSocket)")
    parser.add_argument("--poll-to", choices=["owner", "away", "any"], default="owner",
                        help="--transport poll: where each poll of a receiver goes: the "
                             "process that opened it (owner), always the next one of "
                             "--receiver-ports (away), or one drawn at random per poll (any: "
                             "no sticky sessions; the Atmosphere protocol only)")
    parser.add_argument("--clients", type=int, default=100, help="receivers (N)")
    parser.add_argument("--messages", type=int, default=200, help="messages to send (M)")
    parser.add_argument("--rate", type=float, default=0,
                        help="messages per second; 0: as fast as the window allows")
    parser.add_argument("--window", type=int, default=0,
                        help="at most W messages in flight (sent, not yet received by all); "
                             "0: no window (10 when --rate is 0)")
    parser.add_argument("--size", type=int, default=150, help="message size in bytes")
    parser.add_argument("--connect-concurrency", type=int, default=100)
    parser.add_argument("--connect-timeout", type=float, default=30)
    parser.add_argument("--settle", type=float, default=1.0,
                        help="seconds to wait before reading the server's RSS")
    parser.add_argument("--idle-timeout", type=float, default=5.0,
                        help="end the run when nothing arrived for this long")
    parser.add_argument("--max-seconds", type=float, default=300.0,
                        help="stop sending after this long")
    parser.add_argument("--storm", action="store_true",
                        help="measure connecting only: N WebSocket receivers connect, the "
                             "server's CPU time per connection until all are registered")
    parser.add_argument("--probe-interval", type=float, default=0.1,
                        help="--storm: seconds between readiness probes")
    return parser.parse_args(argv)


def cli(argv=None) -> None:
    args = parse_args(argv)
    import uvloop
    result = uvloop.run(main(args))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    cli()
