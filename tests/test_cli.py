"""``flask atmosphere run``: the app served on gevent with the standard
library patched first, so a blocking view stops nobody else; a clean stop on
Ctrl-C. And under Werkzeug's own ``flask run``, a loud refusal."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import requests

from conftest import ATMOSPHERE_PARAMS, TIMEOUT, WSClient
from redis_servers import free_port

APP = textwrap.dedent('''
    import time
    from flask import Flask
    from flask_atmosphere import Atmosphere, AtmosphereClient, TextMessage

    app = Flask(__name__)
    atmosphere = Atmosphere(app)

    @atmosphere.route("/echo")
    class Echo(AtmosphereClient):
        def receive(self, event):
            if isinstance(event, TextMessage):
                self.send(event.text)

    @app.route("/slow")
    def slow():
        time.sleep(3)  # blocking, as a database driver would be
        return "slow"
''')


def start(tmp_path: Path, *command: str) -> tuple[subprocess.Popen[str], int]:
    (tmp_path / "slowapp.py").write_text(APP)
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(Path.cwd())]))
    process = subprocess.Popen([sys.executable, "-m", "flask", "--app", "slowapp", *command,
                                "--port", str(port)], cwd=tmp_path, env=env,
                               stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # its own process group, as a terminal's
    assert process.stderr is not None
    for line in process.stderr:  # until it says it listens
        if "serving on" in line or "Running on" in line:
            return process, port
    raise AssertionError(f"it did not start (exit {process.wait()})")


def test_flask_atmosphere_run_serves_with_the_standard_library_patched(tmp_path):
    process, port = start(tmp_path, "atmosphere", "run")
    try:
        def sleep_in_a_view():
            try:
                requests.get(f"http://127.0.0.1:{port}/slow", timeout=TIMEOUT)
            except requests.RequestException:
                pass  # the server stopped under it: no matter here

        slow = threading.Thread(target=sleep_in_a_view)
        slow.start()
        query = "&".join(f"{k}={v}" for k, v in ATMOSPHERE_PARAMS.items())
        client = WSClient(f"ws://127.0.0.1:{port}/echo?{query}", track=True, protocol=True)
        client.send("while a view sleeps")
        assert client.recv() == "while a view sleeps"
        assert slow.is_alive()  # the sleeping view did not hold the others up
        client.close()
        process.send_signal(signal.SIGINT)  # Ctrl-C
        assert process.wait(TIMEOUT) == 0
        slow.join(TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm to the server"])
def test_with_the_reloader_a_stop_ends_every_process(tmp_path, stop):
    """``--reload`` runs the server in a child process, beside a file
    watcher, under a parent that restarts it: Ctrl-C (SIGINT to the
    terminal's process group), or SIGTERM to the server's process, ends
    them all."""
    process, port = start(tmp_path, "atmosphere", "run", "--reload")
    try:
        assert requests.get(f"http://127.0.0.1:{port}/none", timeout=TIMEOUT).status_code == 404
        if stop == "ctrl-c":
            os.killpg(process.pid, signal.SIGINT)
        else:
            server = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True,
                                    text=True, check=True).stdout.split()
            os.kill(int(server[0]), signal.SIGTERM)
        assert process.wait(TIMEOUT) == 0  # the parent, which waited for its child
        with pytest.raises(ProcessLookupError):  # and nothing of the group is left
            os.killpg(process.pid, 0)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_werkzeugs_flask_run_is_refused_loudly(tmp_path):
    process, port = start(tmp_path, "run")
    try:
        answer = requests.get(f"http://127.0.0.1:{port}/echo", params={
            "X-Atmosphere-Transport": "long-polling", "X-Atmosphere-tracking-id": "0",
            "X-atmo-protocol": "true"}, timeout=TIMEOUT)
        assert answer.status_code == 500
        assert "flask-atmosphere needs a gevent server" in answer.text
        assert "flask atmosphere run" in answer.headers["X-Atmosphere-error"]
    finally:
        process.terminate()
        _, err = process.communicate(timeout=TIMEOUT)
    assert err.count("flask-atmosphere needs a gevent server") == 1  # logged, once


def test_a_busy_port_is_one_clear_line(tmp_path):
    process, port = start(tmp_path, "atmosphere", "run")
    try:
        (tmp_path / "slowapp.py").write_text(APP)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(Path.cwd())]))
        again = subprocess.run([sys.executable, "-m", "flask", "--app", "slowapp", "atmosphere",
                                "run", "--port", str(port)], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=TIMEOUT)
        assert again.returncode != 0
        assert f"cannot serve on 127.0.0.1:{port}" in again.stderr
        assert "Traceback" not in again.stderr
    finally:
        process.kill()
        process.wait()

