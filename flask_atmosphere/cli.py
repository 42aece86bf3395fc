"""``flask atmosphere run``: serve a Flask app on flask-atmosphere's gevent
server, with the standard library patched by gevent before the app is
imported (so that a blocking call in an ordinary view, ``time.sleep`` or a
database driver, yields to the other connections instead of freezing them).

    flask --app chat atmosphere run --port 8080
    flask --app chat --debug atmosphere run --reload

It takes ``flask run``'s usual options where they make sense. Registered for
every app through the ``flask.commands`` entry point.
"""
from __future__ import annotations

import os
import sys

import click
from flask.cli import ScriptInfo, pass_script_info

__all__ = ["atmosphere_cli", "main"]


@click.group("atmosphere", help="Serve the app with flask-atmosphere's gevent server.")
def atmosphere_cli() -> None:
    """The ``flask atmosphere`` commands."""


@atmosphere_cli.command("run", help="Serve the app on gevent, the standard library patched.")
@click.option("--host", "-h", default="127.0.0.1", show_default=True,
              help="The interface to bind to.")
@click.option("--port", "-p", default=5000, show_default=True, type=click.IntRange(0, 65535),
              help="The port to bind to.")
@click.option("--reload/--no-reload", default=None,
              help="Restart when a source file changes (on by default with --debug).")
@pass_script_info
def run_command(info: ScriptInfo, host: str, port: int, reload: bool | None) -> None:
    """Re-run as ``python -m flask_atmosphere``, which patches the standard
    library first and then imports the app (the ``flask`` command imported
    it already, unpatched)."""
    if info.app_import_path:
        os.environ["FLASK_APP"] = info.app_import_path
    args = [sys.executable, "-m", "flask_atmosphere", "run", "--host", host, "--port", str(port)]
    if reload is not None:
        args.append("--reload" if reload else "--no-reload")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, args)


def main(argv: list[str] | None = None) -> None:
    """``python -m flask_atmosphere run [--host H] [--port P] [--reload]``:
    patch the standard library, import the app ``FLASK_APP`` names (as
    ``flask --app`` does) and serve it until SIGINT or SIGTERM."""
    from gevent import monkey
    monkey.patch_all()

    import logging

    import gevent
    from flask.helpers import get_debug_flag
    from werkzeug._reloader import run_with_reloader  # what Werkzeug's run_simple uses

    @click.command("run")
    @click.option("--host", "-h", default="127.0.0.1")
    @click.option("--port", "-p", default=5000, type=click.IntRange(0, 65535))
    @click.option("--reload/--no-reload", default=None)
    def serve(host: str, port: int, reload: bool | None) -> None:
        debug = get_debug_flag()
        logging.basicConfig(level=logging.DEBUG if debug else logging.INFO,
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")
        if reload is None:
            reload = debug

        def run() -> None:
            app = ScriptInfo(app_import_path=os.environ.get("FLASK_APP")).load_app()
            if "atmosphere" not in app.extensions:
                raise click.UsageError(f"the app {app.name!r} has no Atmosphere: call "
                                       f"Atmosphere(app) or atmosphere.init_app(app)")
            from .server import AtmosphereServer
            server = AtmosphereServer(app, host, port)
            try:
                server.wsgi.init_socket()  # bind now: a refusal is one line, not a traceback
            except OSError as exc:
                raise click.ClickException(
                    f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
            server.serve_forever()  # it says where it serves
            if reload:
                # Under the reloader this runs in a thread (a greenlet, gevent
                # patched) beside the file watcher, which would go on alone:
                # the process ends with the server (the watcher's main
                # greenlet exits), and the reloader's parent, which waits for
                # it, ends with it.
                main = gevent.get_hub().parent
                assert main is not None  # the hub's parent: the main greenlet
                main.throw(SystemExit(0))

        if reload:
            run_with_reloader(run)
        else:
            run()

    serve.main(args=argv if argv is not None else sys.argv[2:], prog_name="flask atmosphere run")
