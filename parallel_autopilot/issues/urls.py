"""A queue's URL, safe to show: the password left out; and read from its secret file (standard library only).

Its own small module so that config (which shows settings) and the stores
(which name their server in every error) share it without importing each other;
the gateway and a runtime with ``queue_access: mount`` read the URL's file with it.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from ..errors import InvalidInput


def redact(url: str) -> str:
    """The URL without its password (for every message, log line and repr)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port:
        netloc += f":{parts.port}"
    return parts._replace(netloc=netloc).geturl()


def read_url_file(path: str | Path) -> str:
    """The URL in the secret file ``path`` (``AUTOPILOT_QUEUE_FILE``); InvalidInput in one line."""
    try:
        url = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise InvalidInput(f"AUTOPILOT_QUEUE_FILE={path}: cannot read it ({exc.strerror}): "
                           "mount the queue secret file read-only there") from None
    if not url:
        raise InvalidInput(f"AUTOPILOT_QUEUE_FILE={path} is empty: write the postgresql:// URL into it")
    return url
