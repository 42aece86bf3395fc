"""``python -m flask_atmosphere run``: see ``flask_atmosphere.cli``."""
import sys

from flask_atmosphere.cli import main

if __name__ == "__main__":
    if sys.argv[1:2] != ["run"]:
        sys.exit("usage: python -m flask_atmosphere run [--host HOST] [--port PORT] [--reload] "
                 "(with FLASK_APP naming the app)")
    main()
