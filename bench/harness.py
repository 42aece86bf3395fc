"""The harness: start a server as its own process on one core, drive it from
the load generator (``bench/loadgen.py``) as another process on another core,
collect the numbers, stop the server.

Everything listens on 127.0.0.1 only; every run is bounded in messages and
time (see the load generator) and the harness kills what it started.
"""
from __future__ import annotations

import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SERVERS_DIR = HERE / "servers"

#: server name -> the protocol its clients speak
SERVERS = {
    "raw": "plain",
    "atmosphere": "plain",
    "atmosphere_json": "plain",
    "socketio": "socketio",
}
#: the servers that offer long-polling
POLLING_SERVERS = ("atmosphere", "atmosphere_json", "socketio")

PACKAGES = ("flask-atmosphere", "Flask", "Werkzeug", "gevent", "greenlet", "gevent-websocket",
            "simplejson", "Flask-SocketIO", "python-socketio", "python-engineio", "picows",
            "uvloop", "aiohttp", "py-spy")


def protocol_of(server: str) -> str:
    """The protocol of a server's clients; a server file that is not in
    :data:`SERVERS` (an experiment) speaks plain WebSocket unless its name
    starts with ``socketio``."""
    if server in SERVERS:
        return SERVERS[server]
    return "socketio" if server.startswith("socketio") else "plain"


def machine() -> dict:
    """What the numbers were measured on."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        revision = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                                  capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        revision = "?"
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": versions,
        "git": revision,
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pinned(core: int | None):
    if core is None:
        return None

    def preexec():
        os.sched_setaffinity(0, {core})
    return preexec


def _cores() -> tuple[int, int]:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return cores[0], cores[0]
    return cores[0], cores[1]


def snapshot(rev: str) -> tuple[Path, str]:
    """The ``flask_atmosphere`` package as of git revision ``rev``, unpacked
    into a cache folder (the working tree may be mid-edit while a benchmark
    runs). Returns the folder to put first on ``PYTHONPATH`` and the commit."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"],
                            capture_output=True, text=True, check=True).stdout.strip()
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / "bench-snapshots" / commit
    if not (folder / "flask_atmosphere" / "__init__.py").exists():
        folder.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "flask_atmosphere"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder, commit


def terminate(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if ``proc`` is still there after 10 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Server:
    """A bench server, ``bench/servers/<name>.py PORT``, as a child process
    pinned to ``core``; its output goes to ``log_path``. With ``package``
    (a folder from :func:`snapshot`), it imports flask_atmosphere from there;
    ``env`` adds to its environment."""

    def __init__(self, name: str, core: int | None, log_path: Path,
                 package: Path | None = None, env: dict[str, str] | None = None):
        if name not in SERVERS and not (SERVERS_DIR / f"{name}.py").exists():
            raise ValueError(f"unknown server {name!r}; one of {', '.join(SERVERS)}")
        self.name = name
        self.port = free_port()
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        if package is not None:
            env["PYTHONPATH"] = os.pathsep.join(
                [str(package)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVERS_DIR / f"{name}.py"), str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=_pinned(core), env=env, cwd=str(ROOT))
        self._wait_listening(30)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server {self.name} exited with {self.proc.returncode}; "
                                   f"see {self.log_path}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server {self.name} did not listen within {timeout}s")

    def stop(self) -> None:
        terminate(self.proc)
        self._log.close()


#: Linux perf's samples per second of the server's CPU time (``--perf``).
PERF_RATE = 2000


class Profiler:
    """A sampling profiler recording the server while the load generator is
    in its run phase (``phase: run`` .. ``phase: done`` on its stderr):
    py-spy (Python frames, ``--format raw``), or with ``perf`` Linux perf
    (every frame, kernel too: ``perf record -e cpu-clock -g``, which needs
    no hardware counters, so it works in a VM)."""

    def __init__(self, pid: int, path: Path, core: int | None, rate: int = 250,  # samples per second
                 native: bool = False, perf: bool = False):
        self.pid, self.path, self.core, self.rate, self.native = pid, path, core, rate, native
        self.perf = perf
        self.proc = None

    def start(self) -> None:
        if self.proc is not None:
            return
        if self.perf:
            command = ["perf", "record", "-F", str(PERF_RATE), "-e", "cpu-clock", "-g",
                       "-p", str(self.pid), "-o", str(self.path)]
        else:
            command = ["py-spy", "record", "-p", str(self.pid), "-r", str(self.rate),
                       "--format", "raw", "-o", str(self.path)]
            command += ["--native"] if self.native else ["--nonblocking"]
            venv_bin = Path(sys.executable).parent
            if (venv_bin / "py-spy").exists():
                command[0] = str(venv_bin / "py-spy")
        self._log = open(self.path.with_suffix(f".{command[0].rsplit('/', 1)[-1]}.log"), "wb")
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                     preexec_fn=_pinned(self.core))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self._log.close()


def run_once(server: str, *, transport: str = "ws", clients: int = 100, messages: int = 200,
             rate: float = 0, window: int = 0, size: int = 150, idle_timeout: float = 5.0,
             max_seconds: float = 300.0, connect_concurrency: int = 100,
             profile: Path | None = None, profile_native: bool = False,
             profile_perf: bool = False, log_dir: Path | None = None, verbose: bool = True,
             wait_quiet: float = 0.0, rev: str | None = None, storm: bool = False) -> dict:
    """One server, one load: returns the load generator's numbers.

    With ``storm``, the load is connecting only (the load generator's
    ``--storm``: N WebSocket receivers, the server's CPU time per connection
    until all are registered; no messages), and a profiler records the
    connect phase instead of the run phase.

    With ``wait_quiet`` > 0, first wait up to that many seconds for the
    machine to be quiet (see :func:`wait_for_quiet`).
    With ``rev``, the server imports flask_atmosphere as of that git revision
    (see :func:`snapshot`) instead of the working tree."""
    server_core, loadgen_core = _cores()
    background = wait_for_quiet(wait_quiet, verbose)
    log_dir = log_dir or default_log_dir()
    package, commit = snapshot(rev) if rev else (None, None)
    srv = Server(server, server_core, log_dir / f"{server}.log", package)
    profiler = None
    try:
        command = loadgen_command(
            srv.port, [srv.pid], protocol_of(server), transport=transport, clients=clients,
            messages=messages, rate=rate, window=window, size=size, idle_timeout=idle_timeout,
            max_seconds=max_seconds, connect_concurrency=connect_concurrency)
        if storm:
            if transport != "ws":
                raise ValueError("a connect storm is WebSocket only")
            command.append("--storm")
        if profile is not None:
            profile.parent.mkdir(parents=True, exist_ok=True)
            profiler = Profiler(srv.pid, profile, loadgen_core, native=profile_native,
                                perf=profile_perf)
        limit = 120 + max_seconds + idle_timeout + clients / 20
        result = drive(command, server, loadgen_core, log_dir, limit, profiler, verbose)
        result["server"] = server
        result["storm"] = storm
        result["server_core"], result["loadgen_core"] = server_core, loadgen_core
        result["background_busy"] = background
        result["package_rev"] = commit or "working tree"
        result["server_rss_end_kib"] = _rss(srv.pid)
        return result
    finally:
        if profiler is not None:
            profiler.stop()
        srv.stop()


def default_log_dir() -> Path:
    """Where servers and load generators write their output
    (``$TMPDIR/bench-logs``)."""
    path = Path(os.environ.get("TMPDIR", "/tmp")) / "bench-logs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def wait_for_quiet(wait_quiet: float, verbose: bool = True) -> float:
    """With ``wait_quiet`` > 0, wait up to that many seconds for the machine
    to be quiet (other processes below 10 % of the cores for 2 s); returns
    how busy it was last (see :func:`background_busy`)."""
    background = background_busy()
    if wait_quiet > 0 and background > 0.10:
        deadline = time.monotonic() + wait_quiet
        if verbose:
            print(f"  waiting up to {wait_quiet:.0f}s for a quiet machine "
                  f"(now {100 * background:.0f}% busy)", file=sys.stderr, flush=True)
        while time.monotonic() < deadline:
            background = background_busy(2.0)
            if background <= 0.10:
                break
    return background


def loadgen_command(port: int, pids: list[int], protocol: str, *, transport: str = "ws",
                    clients: int = 100, messages: int = 200, rate: float = 0, window: int = 0,
                    size: int = 150, idle_timeout: float = 5.0, max_seconds: float = 300.0,
                    connect_concurrency: int = 100, receiver_ports: list[int] | None = None,
                    aux_pids: list[int] | None = None, poll_to: str = "owner") -> list[str]:
    """The load generator's command line: the sender on ``port``, the
    receivers on ``receiver_ports`` in turn (default: ``port`` too), the
    server's CPU time summed over ``pids``, and that of ``aux_pids`` (what
    the server needs besides itself, such as redis-server) apart;
    ``poll_to``: where each poll of a long-polling receiver goes (the
    load generator's ``--poll-to``)."""
    command = [sys.executable, "-m", "bench.loadgen", "--port", str(port),
               "--server-pid", ",".join(map(str, pids)), "--protocol", protocol,
               "--transport", transport, "--clients", str(clients),
               "--messages", str(messages), "--rate", str(rate), "--window", str(window),
               "--size", str(size), "--idle-timeout", str(idle_timeout),
               "--max-seconds", str(max_seconds),
               "--connect-concurrency", str(connect_concurrency)]
    if receiver_ports:
        command += ["--receiver-ports", ",".join(map(str, receiver_ports))]
    if aux_pids:
        command += ["--aux-pid", ",".join(map(str, aux_pids))]
    if poll_to != "owner":
        command += ["--poll-to", poll_to]
    return command


def drive(command: list[str], label: str, core: int | None, log_dir: Path, limit: float,
          profiler: Profiler | None = None, verbose: bool = True) -> dict:
    """Run the load generator (``command``, from :func:`loadgen_command`)
    pinned to ``core`` for at most ``limit`` seconds, echo its phases as
    ``[label]`` lines, start and stop ``profiler`` on them; its JSON."""
    with open(log_dir / f"{label}.loadgen.out", "w+") as out_file:
        proc = subprocess.Popen(command, stdout=out_file, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, preexec_fn=_pinned(core),
                                cwd=str(ROOT), text=True)
        errors: list[str] = []

        def watch_stderr():
            # the only reader of the load generator's stderr: its phases
            for line in proc.stderr:
                line = line.rstrip("\n")
                errors.append(line)
                if verbose:
                    print(f"  [{label}] {line}", file=sys.stderr, flush=True)
                if profiler is not None:
                    # the run phase; with --storm, the connect phase (profile-start .. -stop)
                    if line.startswith(("phase: run", "phase: profile-start")):
                        profiler.start()
                    elif line.startswith(("phase: done", "phase: profile-stop")):
                        profiler.stop()

        watcher = threading.Thread(target=watch_stderr, daemon=True)
        watcher.start()
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise RuntimeError(
                f"the load generator did not finish within {limit:.0f}s") from None
        finally:
            watcher.join(10)
        out_file.seek(0)
        stdout = out_file.read()
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(errors[-15:])
        raise RuntimeError(f"the load generator failed ({proc.returncode}):\n{tail}")
    return json.loads(lines[-1])


def background_busy(seconds: float = 0.5) -> float:
    """How busy the machine's cores are (0..1, all cores together) over
    ``seconds``, before a run: other work here skews every number."""
    def sample():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:9]]
        idle = values[3] + values[4]
        return sum(values) - idle, sum(values)
    busy0, total0 = sample()
    time.sleep(seconds)
    busy1, total1 = sample()
    return round((busy1 - busy0) / max(total1 - total0, 1), 3)


def _rss(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None
