"""``python -m demo [--host HOST] [--port PORT]``: serve the demo chat."""
import argparse
import logging

from . import atmosphere, create_app


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="TCP port (default 8080)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    atmosphere.run(create_app(), args.host, args.port)


if __name__ == "__main__":
    main()
