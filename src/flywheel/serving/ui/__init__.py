"""The dashboard: server-rendered pages (Jinja2, autoescaped) with charts drawn in the
browser from the store's data (``static/app.js``, SVG; no build step, no CDN)."""

from flywheel.serving.ui.routes import router, static_files

__all__ = ["router", "static_files"]
