"""A queue's URL, safe to show: the password left out (standard library only).

Its own small module so that config (which shows settings) and the stores
(which name their server in every error) share it without importing each other.
"""

from __future__ import annotations

from urllib.parse import urlsplit


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
