"""``python -m demo [--host HOST] [--port PORT]``: serve the demo chat."""
from gevent import monkey

monkey.patch_all()  # first, before the app and what it imports (see the README's Serving)

import argparse  # noqa: E402
import logging  # noqa: E402

from . import atmosphere, create_app  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="TCP port (default 8080)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        atmosphere.run(create_app(), args.host, args.port)
    except OSError as exc:  # the port is taken, or the address is not ours: one line
        parser.exit(1, f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}\n")


if __name__ == "__main__":
    main()
