"""The demo chat: ``python -m demo`` serves it on http://127.0.0.1:8080;
``demo:app`` is the app for a WSGI server (gunicorn, ``flask --app demo``)."""
from typing import Any

from .chat import atmosphere, create_app

__all__ = ["atmosphere", "create_app", "app"]


def __getattr__(name: str) -> Any:
    if name == "app":  # made on first use: importing the package makes no app
        value = globals()["app"] = create_app()
        return value
    raise AttributeError(name)
