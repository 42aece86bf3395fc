"""What every bench server shares: the command line (``PORT``) and a quiet exit.

Each server is a separate file run as ``python bench/servers/<name>.py PORT``;
it listens on 127.0.0.1 only and relays every inbound text frame on
``/the-chat`` to every other client.
"""
import os
import resource
import sys


def setup() -> int:
    """Drop this folder from ``sys.path`` (``socketio.py`` would shadow the
    real package), raise the file-descriptor limit, return the port. With
    ``BENCH_PATCHED=1``, patch the standard library with gevent first, as a
    deployed app does (``flask atmosphere run``, the gunicorn worker)."""
    if os.environ.get("BENCH_PATCHED") == "1":
        from gevent import monkey
        monkey.patch_all()
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        sys.exit(f"usage: python {sys.argv[0]} PORT")
    return int(sys.argv[1])
