"""Builds the agent image, offline when it must.

:func:`ensure_image` is what ``agents.start`` calls: it builds only when the
image is missing or was built from other sources (the image carries a label
with a hash of the package, the Dockerfile and the build arguments, so the
check is one ``images.get``). :func:`build` is ``inv build``.

The Dockerfile and the compose file are package data (``containers/files/``):
the build context is a directory :func:`build_context` makes from the INSTALLED
package, so a wheel builds the same image a checkout does. The Dockerfile starts ``FROM ${BASE_IMAGE}`` (``settings.base_image``,
``python:3.11-slim`` by default). When that image is neither present nor
pullable (no registry, as on a machine behind a firewall or in CI), a Debian
bookworm base is made ONCE with ``debootstrap --variant=minbase`` and
``docker import``, tagged :data:`OFFLINE_BASE`, and reused from then on.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from .. import __version__
from ..errors import DockerUnavailable, ImageBuildError, InvalidInput, one_line
from . import agentcli, daemon

if TYPE_CHECKING:  # for annotations only: this module needs nothing of config at run time
    from ..config import Settings

Progress = Callable[[str], None]

#: the locally made base image (Debian bookworm minbase + python3, git)
OFFLINE_BASE = "parallel-autopilot-base:bookworm"
#: image label holding :func:`source_hash`
LABEL_HASH = "parallel-autopilot.source-hash"
LABEL_BASE = "parallel-autopilot.base-image"
#: the package version the image was built from (``parallel-autopilot --version``)
LABEL_VERSION = "parallel-autopilot.version"
DEBOOTSTRAP_SUITE = "bookworm"
DEBOOTSTRAP_PACKAGES = ("python3", "git", "ca-certificates")
#: what the image needs besides the package: package data, installed with it
FILES = Path(__file__).resolve().parent / "files"
#: the Dockerfile, in the build context
DOCKERFILE = "Dockerfile"
AGENT_CLIS = agentcli.CHOICES
#: the build-context directory of the pure-Python libraries the runtime imports beyond the
#: standard library (a placeholder README is committed there); the Dockerfile COPYs it
PYLIB_DIR = "pylib"
#: distributions staged from the HOST's installation (no network in the build): pg8000
#: and its pure-Python dependencies, for a queue on PostgreSQL (``autopilot.queue``)
PYTHON_LIBS = ("pg8000", "scramp", "asn1crypto", "python-dateutil", "six")

_PACKAGE = Path(__file__).resolve().parents[1]  # parallel_autopilot/
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# build output lines that say nothing about what went wrong
_BOOKKEEPING = re.compile(r"^(---> |Running in |Removing intermediate container|Step \d+/\d+ :)")


BUILD_LOCK = Path(tempfile.gettempdir()) / "parallel-autopilot-build.lock"


def dockerfile() -> Path:
    """The installed package's Dockerfile (``containers/files/Dockerfile``), or ImageBuildError."""
    path = FILES / DOCKERFILE
    if not path.is_file():
        raise ImageBuildError(f"{path} is missing: reinstall parallel-autopilot (pip install --force-reinstall "
                              "parallel-autopilot)")
    return path


def package_files() -> list[Path]:
    """Every file of the installed package, byte code and caches left out: what the image's source
    hash covers, and what ``distribution.build_wheel`` zips."""
    return sorted(p for p in _PACKAGE.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo"))


def source_hash(settings: Settings, libs: Iterable[tuple[str, Path]] | None = None) -> str:
    """sha256 of what goes into the image: package files, Dockerfile, build arguments, ``libs``.

    ``libs``: the staged Python libraries, (path in the pylib directory, file); default :func:`python_lib_files`.
    """
    digest = hashlib.sha256()
    for arg in (_base_image(settings), _agent_cli(settings), *sorted(agentcli.labels(_agent_cli(settings)).items())):
        digest.update(f"arg:{arg}\0".encode())
    digest.update(b"dockerfile\0" + dockerfile().read_bytes() + b"\0")
    for path in package_files():
        digest.update(path.relative_to(_PACKAGE).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    for relative, path in (python_lib_files() if libs is None else libs):
        digest.update(b"pylib:" + relative.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def python_lib_files() -> list[tuple[str, Path]]:
    """(path in the pylib directory, installed file) of every :data:`PYTHON_LIBS` module file.

    Taken from the host's installed distributions (their RECORD): pure Python, so
    they run on the image's Python whatever the host's. The ``.dist-info`` goes
    too: pg8000 and scramp read their own version from it at import. A
    distribution the host lacks is left out (no PostgreSQL driver; SQLite works).
    """
    from importlib import metadata

    found: dict[str, Path] = {}
    for name in PYTHON_LIBS:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for entry in dist.files or ():
            parts = entry.parts
            if (not parts or parts[0] == ".." or "__pycache__" in parts or entry.suffix in (".pyc", ".pyo")
                    or entry.name in ("RECORD", "INSTALLER", "direct_url.json")):
                continue
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                found[entry.as_posix()] = path
    return sorted(found.items())


def _base_image(settings: Settings) -> str:
    return str(settings.base_image or "python:3.11-slim")


def _agent_cli(settings: Settings) -> str:
    cli = str(settings.agent_cli or "none").lower()
    if cli not in AGENT_CLIS:
        raise ImageBuildError(f"agent_cli {cli!r} is unknown: use none, codex, claude or all")
    return cli


def image_labels(settings: Settings, client: Any = None) -> dict[str, str] | None:
    """The labels of ``settings.image``, or None when it does not exist."""
    from docker.errors import ImageNotFound

    client = client or daemon.client()
    try:
        found = client.images.get(settings.image)
    except ImageNotFound:
        return None
    return dict((found.attrs.get("Config") or {}).get("Labels") or {})


def image_status(settings: Settings, client: Any = None) -> str:
    """``missing``, ``stale`` (built from other sources) or ``current``."""
    from docker.errors import ImageNotFound

    client = client or daemon.client()
    try:
        found = client.images.get(settings.image)
    except ImageNotFound:
        return "missing"
    labels = (found.attrs.get("Config") or {}).get("Labels") or {}
    return "current" if labels.get(LABEL_HASH) == source_hash(settings) else "stale"


def ensure_image(settings: Settings, progress: Progress = print, rebuild: bool = False, *, client: Any = None,
                 builder: Callable[..., Any] | None = None) -> str:
    """Build ``settings.image`` unless it exists and matches the sources; return its name.

    ``client`` is the Docker client (default :func:`daemon.client`), ``builder`` what builds (default :func:`build`).
    """
    client = client or daemon.client()
    if not rebuild and image_status(settings, client) == "current":
        progress(f"image {settings.image} is up to date")
        return settings.image
    # one builder at a time on this host: a concurrent build's clean-up would
    # delete our freshly built (still untagged) image, and two builds of the
    # same sources are one too many
    with _build_lock():
        status = "rebuild asked" if rebuild else image_status(settings, client)
        if status == "current":
            progress(f"image {settings.image} is up to date (built meanwhile by another process)")
            return settings.image
        progress(f"image {settings.image}: {status}, building")
        (builder or build)(settings, progress=progress)
    return settings.image


def build(settings: Settings, progress: Progress = print, nocache: bool = False,
          network_mode: str | None = None) -> str:
    """Build ``settings.image`` from the Dockerfile; return the image id.

    The base is ``settings.base_image`` if present or pullable, else the
    offline base (made once with debootstrap). Build output is streamed to
    ``progress`` line by line.
    """
    with _build_lock():
        return _build(settings, progress, nocache, network_mode)


def _build(settings: Settings, progress: Progress, nocache: bool, network_mode: str | None = None) -> str:
    daemon.client()  # a clear DockerUnavailable before anything else
    cli = _agent_cli(settings)
    context, path = build_context(settings, progress), dockerfile()
    path = context / DOCKERFILE
    base = base_image(settings, progress=progress)
    labels = {LABEL_HASH: source_hash(settings), LABEL_BASE: base, LABEL_VERSION: __version__,
              **agentcli.labels(cli)}
    progress(f"building {settings.image} on {base} (context {context})")
    previous = _image_id(settings.image)
    try:
        with contextlib.closing(_long_client()) as long_client:
            image_id, _ = _stream_build(long_client.api, settings, context, path, base, labels, nocache,
                                        progress, network_mode)
    except ImageBuildError:
        raise
    except Exception as err:  # noqa: BLE001 - daemon/API failures become one line
        raise ImageBuildError(f"building {settings.image} failed: {one_line(err)}") from None
    built = daemon.client().images.get(settings.image)
    progress(f"built {settings.image} ({built.short_id})")
    if previous and previous != built.id:
        _remove_quietly(previous)
    _prune_replaced()
    return image_id or built.id


def describe(settings: Settings) -> dict:
    """The image's name, id, size in bytes and agent CLI versions (from its labels)."""
    found = daemon.client().images.get(settings.image)
    labels = (found.attrs.get("Config") or {}).get("Labels") or {}
    return {"image": settings.image, "id": found.id, "size": found.attrs.get("Size"),
            "clis": {k[len(agentcli.LABEL_PREFIX):]: v for k, v in sorted(labels.items())
                     if k.startswith(agentcli.LABEL_PREFIX)}}


def _image_id(name: str) -> str | None:
    from docker.errors import ImageNotFound

    try:
        return daemon.client().images.get(name).id
    except ImageNotFound:
        return None


def _prune_replaced() -> None:
    # earlier builds that were still in use when replaced; only images of ours
    # (they carry LABEL_HASH) and only those no tag points to any more
    try:
        stale = daemon.client().images.list(filters={"dangling": True, "label": LABEL_HASH})
    except Exception:  # noqa: BLE001 - housekeeping must never fail a build
        return
    for old in stale:
        _remove_quietly(old.id)


def _remove_quietly(image_id: str) -> None:
    # the replaced image would pile up as <none>; one still used by a
    # container (or by another tag) stays, which is what we want
    from docker.errors import APIError

    try:
        daemon.client().images.remove(image_id, noprune=False)
    except APIError:
        pass


def build_context(settings: Settings, progress: Progress = print) -> Path:
    """The directory sent to the daemon: a copy of what the image needs, never the checkout.

    It is ``<cli_cache>/context-<hash of the package's path>``: the installed package,
    its Dockerfile, the pure-Python libraries of :data:`PYTHON_LIBS` (copied from the
    host's installation: the build has no network) and the staged CLI binaries (hard
    links into the npm cache), nothing else.
    """
    cli = _agent_cli(settings)
    try:
        agentcli.clis(cli)
    except InvalidInput as err:
        raise ImageBuildError(str(err)) from None
    digest = hashlib.sha256(str(_PACKAGE).encode()).hexdigest()[:10]
    context = agentcli.cache_root(settings) / f"context-{digest}"
    # the package and Dockerfile are copied fresh (small); the CLI tree is kept and
    # topped up, so an unchanged CLI is the same files, and the same COPY layer
    shutil.rmtree(context / "parallel_autopilot", ignore_errors=True)
    context.mkdir(parents=True, exist_ok=True)
    shutil.copytree(_PACKAGE, context / "parallel_autopilot",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", "*.egg-info"))
    shutil.copy2(dockerfile(), context / DOCKERFILE)
    cli_dir = context / agentcli.CONTEXT_DIR
    cli_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(FILES / agentcli.CONTEXT_DIR / "README.md", cli_dir / "README.md")
    wanted = set(agentcli.clis(cli))
    for other in set(agentcli.MODEL_KINDS) - wanted:  # a CLI no longer asked for must not linger
        shutil.rmtree(cli_dir / other, ignore_errors=True)
        for leftover in (cli_dir / "bin" / other, cli_dir / f"{other}.version"):
            if leftover.is_symlink() or leftover.exists():
                leftover.unlink()
    agentcli.stage(cli, cli_dir, settings, progress)
    _stage_python_libs(context / PYLIB_DIR)
    return context


def _stage_python_libs(target: Path) -> None:
    # copied fresh (a few MB) so a library removed on the host is gone here too; mtimes
    # pinned, so an unchanged library is the same COPY layer on every build
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    shutil.copy2(FILES / PYLIB_DIR / "README.md", target / "README.md")
    for relative, path in python_lib_files():
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, destination)
        os.utime(destination, (0, 0))
    for directory in [target, *target.rglob("*")]:
        if directory.is_dir():
            os.utime(directory, (0, 0))


def _stream_build(api: Any, settings: Settings, context: Path, path: Path, base: str, labels: dict,
                  nocache: bool, progress: Progress, network_mode: str | None = None) -> tuple[str | None, str]:
    image_id, last = None, ""
    extra = {"network_mode": network_mode} if network_mode else {}
    stream = api.build(path=str(context), dockerfile=path.relative_to(context).as_posix(), tag=settings.image,
                       buildargs={"BASE_IMAGE": base, "AGENT_CLI": _agent_cli(settings)},
                       labels=labels, rm=True, forcerm=True, pull=False, nocache=nocache,
                       decode=True, timeout=None, **extra)
    for chunk in stream:
        if "error" in chunk:
            detail = (chunk.get("errorDetail") or {}).get("message") or chunk["error"]
            # "The command '<the whole RUN script>' returned a non-zero code: 1"
            detail = re.sub(r"^The command '.*' returned a non-zero code: (\d+)$",
                            r"a RUN step exited with \1", str(detail).strip(), flags=re.S)
            raise ImageBuildError(f"building {settings.image} failed: {one_line(detail)}"
                                  f"{' (last output: ' + last + ')' if last else ''}: see the output above")
        if isinstance(chunk.get("aux"), dict):
            image_id = chunk["aux"].get("ID", image_id)
        for line in _ANSI.sub("", str(chunk.get("stream", ""))).splitlines():
            if line.strip():
                short = one_line(line)
                progress(short)  # a RUN step echoes its whole script: keep lines short
                if not _BOOKKEEPING.match(short):
                    last = short
    return image_id, last


def base_image(settings: Settings, progress: Progress = print, *, client: Any = None,
               puller: Callable[..., str | None] | None = None, offline: Callable[..., str] | None = None) -> str:
    """The base to build on: ``settings.base_image`` if present or pullable, else the offline base.

    ``client`` is the Docker client (default :func:`daemon.client`); ``puller`` pulls (default
    :func:`pull`), ``offline`` makes the offline base (default :func:`offline_base`).
    """
    from docker.errors import ImageNotFound

    wanted = _base_image(settings)
    client = client or daemon.client()
    try:
        client.images.get(wanted)
        return wanted
    except ImageNotFound:
        pass
    if wanted != OFFLINE_BASE:
        reason = (puller or pull)(wanted, progress=progress)
        if reason is None:
            return wanted
        progress(f"cannot pull {wanted} ({reason}): using the offline base {OFFLINE_BASE}")
    return (offline or offline_base)(progress=progress)


def pull(name: str, progress: Progress = print, timeout: float = 60) -> str | None:
    """Pull ``name``; None on success, else the reason (one line). Never hangs past ``timeout``
    seconds of silence from the daemon (a registry that drops packets)."""
    repository, tag = _split_tag(name)
    progress(f"pulling {name}")
    try:
        with contextlib.closing(daemon.new_client(timeout=timeout)) as puller:
            status = ""
            for chunk in puller.api.pull(repository, tag=tag, stream=True, decode=True):
                if "error" in chunk:
                    return one_line(chunk["error"])
                if chunk.get("status") and chunk["status"] != status and "id" not in chunk:
                    status = chunk["status"]
                    progress(f"  {status}")
    except DockerUnavailable:
        raise
    except Exception as err:  # noqa: BLE001 - registry/DNS/timeouts: "not pullable"
        return one_line(getattr(err, "explanation", None) or err)
    return None


def _split_tag(name: str) -> tuple[str, str]:
    # a ':' after the last '/' is a tag; before it, a registry port
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1:]
    return name, "latest"


def offline_base(progress: Progress = print, popen: Callable[..., Any] = subprocess.Popen,
                 workdir: str | os.PathLike | None = None, *, client: Any = None,
                 which: Callable[[str], str | None] = shutil.which, euid: Callable[[], int] = os.geteuid) -> str:
    """Make :data:`OFFLINE_BASE` with debootstrap + docker import, unless it exists; return it.

    A file lock makes concurrent callers build it once. Needs root (``euid``) and
    ``debootstrap`` (Debian/Ubuntu: ``apt-get install debootstrap``) on the PATH (``which``).
    ``client`` is the Docker client (default :func:`daemon.client`).
    """
    from docker.errors import ImageNotFound

    client = client or daemon.client()

    def present() -> bool:
        try:
            client.images.get(OFFLINE_BASE)
            return True
        except ImageNotFound:
            return False

    if present():
        return OFFLINE_BASE
    with _lock(Path(tempfile.gettempdir()) / "parallel-autopilot-base.lock"):
        if present():  # made by another process while we waited
            return OFFLINE_BASE
        if which("debootstrap") is None:
            raise ImageBuildError(
                "no base image: the registry is unreachable and debootstrap is missing: "
                "apt-get install debootstrap (or run scripts/bootstrap.sh), or set autopilot.base_image "
                "to a local image")
        if euid() != 0:
            raise ImageBuildError(
                f"no base image: the registry is unreachable and making {OFFLINE_BASE} with "
                "debootstrap needs root: run `sudo inv build` once")
        root = Path(tempfile.mkdtemp(prefix="parallel-autopilot-rootfs-", dir=workdir))
        try:
            _debootstrap(root, progress, popen)
            _import(root, progress)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    progress(f"made {OFFLINE_BASE}")
    return OFFLINE_BASE


def _debootstrap(root: Path, progress: Progress, popen: Callable[..., Any]) -> None:
    progress(f"making {OFFLINE_BASE} with debootstrap (once; about a minute)")
    command = ["debootstrap", "--variant=minbase", f"--include={','.join(DEBOOTSTRAP_PACKAGES)}",
               DEBOOTSTRAP_SUITE, str(root)]
    last = ""
    with popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            line = line.rstrip()
            if not line:
                continue
            last = line
            if line.startswith(("I: Retrieving", "I: Validating", "I: Extracting", "I: Unpacking",
                                "I: Configuring", "I: Checking")):
                continue  # hundreds of per-package lines say nothing useful
            progress(f"  {line}")
        code = proc.wait()
    if code != 0:
        raise ImageBuildError(f"debootstrap failed ({one_line(last) or f'exit {code}'}): check that "
                              "the Debian mirror is reachable, or set autopilot.base_image to a local image")
    # downloaded .debs and package lists are ~100 MB the image never needs
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for entry in (root / junk).glob("*"):
            if entry.is_file() and entry.name not in ("lock",):
                entry.unlink()


def _import(root: Path, progress: Progress) -> None:
    progress(f"importing {OFFLINE_BASE} (docker import)")
    repository, tag = _split_tag(OFFLINE_BASE)
    tar = subprocess.Popen(["tar", "-C", str(root), "--numeric-owner", "-c", "."],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with contextlib.closing(daemon.new_client(timeout=600)) as importer:
            importer.api.import_image_from_stream(
                _chunks(tar.stdout), repository=repository, tag=tag,
                changes=["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                         "ENV LANG=C.UTF-8", 'CMD ["/bin/bash"]'])
    except DockerUnavailable:
        raise
    except Exception as err:  # noqa: BLE001
        raise ImageBuildError(f"docker import of {OFFLINE_BASE} failed: {one_line(err)}") from None
    finally:
        tar.stdout.close()
        stderr = tar.stderr.read().decode(errors="replace")
        code = tar.wait()
    if code != 0:
        raise ImageBuildError(f"tar of the debootstrap tree failed: {one_line(stderr) or code}")


def _chunks(handle: Any, size: int = 1 << 20) -> Iterator[bytes]:
    while True:
        chunk = handle.read(size)
        if not chunk:
            return
        yield chunk


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_held = threading.local()


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """The host-wide build lock; re-entrant within a thread (ensure_image -> build)."""
    if getattr(_held, "depth", 0):
        _held.depth += 1
        try:
            yield
        finally:
            _held.depth -= 1
        return
    with _lock(BUILD_LOCK):
        _held.depth = 1
        try:
            yield
        finally:
            _held.depth = 0


def _long_client() -> Any:
    # builds and imports may be silent for minutes (apt, npm): no read timeout
    return daemon.new_client(timeout=None)


__all__ = ["ensure_image", "build", "base_image", "offline_base", "pull", "image_status",
           "source_hash", "package_files", "dockerfile", "OFFLINE_BASE", "LABEL_HASH"]
