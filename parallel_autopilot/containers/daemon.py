"""The one way the host side gets a Docker SDK client.

``docker.from_env()`` contacts the daemon at once, so nothing here runs at
import time: ``inv --list`` and ``--help`` work on a machine without Docker.
:func:`client` creates the client on first use, pings the daemon and turns
every way of failing to reach it into :class:`DockerUnavailable` (one line
naming the fix).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Sequence

from ..errors import DockerUnavailable

_FIX = "start the daemon (`sudo systemctl start docker` or scripts/bootstrap.sh)"

_lock = threading.Lock()
_client: Any = None


def unavailable(reason: object) -> DockerUnavailable:
    """The DockerUnavailable for ``reason`` (an exception or text), on one line."""
    text = " ".join(str(reason).split()) or reason.__class__.__name__
    if len(text) > 160:
        text = text[:157] + "..."
    return DockerUnavailable(f"Docker is not reachable ({text}): {_FIX}")


def sdk_version() -> str | None:
    """The Docker SDK's version (None where it is not installed)."""
    try:
        import docker
    except ImportError:
        return None
    return docker.__version__


def client(timeout: float = 60) -> Any:
    """A pinged ``docker.DockerClient`` shared by the process, or DockerUnavailable.

    ``timeout`` is the socket timeout of a new client (seconds); the shared
    client is pinged again on every call, so a daemon that went away is
    reported instead of failing later with a traceback.
    """
    global _client
    try:
        from docker.errors import DockerException

        import docker
    except ImportError as err:  # the package is a dependency; be explicit anyway
        raise unavailable(f"the docker Python package is missing: {err}") from None
    with _lock:
        try:
            if _client is None:
                _client = docker.from_env(timeout=timeout)
            _client.ping()
        except (DockerException, OSError) as err:
            _client = None
            raise unavailable(err) from None
        except Exception as err:  # requests' errors are not DockerException
            _client = None
            raise unavailable(err) from None
        return _client


def new_client(timeout: float | None = 60) -> Any:
    """A fresh, pinged client of its own (close it after use), for long operations.

    Builds and imports may be silent for minutes: they want ``timeout=None``
    (no read timeout) without changing the shared client.
    """
    client()  # DockerUnavailable with the usual line if the daemon is away
    import docker

    try:
        fresh = docker.from_env(timeout=timeout)
        fresh.ping()
    except Exception as err:  # noqa: BLE001 - every failure here means "not reachable"
        raise unavailable(err) from None
    return fresh


def reset() -> None:
    """Forget the shared client (tests; after the daemon was restarted)."""
    global _client
    with _lock:
        if _client is not None:
            try:
                _client.close()
            except Exception:  # closing a dead client must not fail the caller
                pass
        _client = None


def available() -> bool:
    """True when the daemon answers a ping (never raises)."""
    try:
        client()
    except DockerUnavailable:
        return False
    return True


# -- containers by name: what ``docker kill/stop/rm`` do, for the bench's baselines and cleanup


def kill(container: str) -> None:
    """SIGKILL ``container`` (a name or id), as ``docker kill`` does."""
    client().api.kill(container)


def stop(containers: Sequence[str], timeout: float) -> None:
    """Stop ``containers`` with ``timeout`` seconds of grace each, all at once.

    ``docker stop -t T a b c`` sends its stop requests in parallel; the API
    takes one container a request, so they are sent together from threads:
    N containers take one grace period, not N.
    """
    names = list(containers)
    if not names:
        return
    api = client().api
    with ThreadPoolExecutor(max_workers=min(len(names), 10)) as pool:  # the SDK's pool holds 10
        for done in [pool.submit(api.stop, name, timeout=int(timeout)) for name in names]:
            done.result()  # the first failure is raised, after every stop has ended


def remove(containers: Iterable[str]) -> int:
    """Force-remove ``containers`` (``docker rm -f``); one already gone is no error. Returns how many went."""
    from docker.errors import NotFound

    api, removed = client().api, 0
    for name in containers:
        try:
            api.remove_container(name, force=True)
            removed += 1
        except NotFound:
            pass
    return removed


def remove_labelled(label: str) -> int:
    """Force-remove every container, running or not, carrying ``label`` (``key=value``)."""
    found = client().api.containers(all=True, quiet=True, filters={"label": label})
    return remove(c["Id"] for c in found)


__all__ = ["DockerUnavailable", "client", "new_client", "reset", "available", "unavailable",
           "kill", "stop", "remove", "remove_labelled"]
