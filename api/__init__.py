"""The HTTP API of mlexp-ctrl: ``uvicorn api:app`` from the repository root."""

from api.app import create_app

app = create_app()

__all__ = ["app", "create_app"]
