"""The "Parallel Agents" web pane: an HTTP edge over :mod:`parallel_autopilot.fleet`.

``app`` builds the FastAPI app and serves it, ``security`` guards it (Host,
CSRF, Origin, token), ``events`` streams snapshots and logs as server-sent
events, ``static/`` holds the page (plain HTML, CSS and JavaScript, no build).
"""

from .app import create_app, serve

__all__ = ["create_app", "serve"]
