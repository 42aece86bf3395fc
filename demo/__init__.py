"""The demo chat: ``python -m demo`` serves it on http://127.0.0.1:8080."""
from .app import atmosphere, create_app

__all__ = ["atmosphere", "create_app"]
