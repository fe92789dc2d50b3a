"""Serving: the FastAPI app, its routes, auth, background jobs and the uvicorn runner."""

from flywheel.serving.app import create_app
from flywheel.serving.server import BackgroundServer, check_can_serve, serve

__all__ = ["BackgroundServer", "check_can_serve", "create_app", "serve"]
