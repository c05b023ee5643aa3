"""A wheel of the parallel-autopilot this process runs: what ``remote.setup``/``remote.sync`` install.

The laptop that drives a workstation installs there exactly the build it runs itself: the
package's files as they are here (a wheel install, an sdist install or a checkout alike) and
the installed distribution's metadata (its dependencies, its console script), zipped as a
pure-Python wheel (PEP 427). The workstation needs no access to the tool's repository and no
build tools; its pip fetches only the dependencies it lacks.
"""

from __future__ import annotations

import base64
import hashlib
import re
import zipfile
from importlib import metadata
from pathlib import Path

from . import __version__
from .containers.image import package_files
from .errors import MissingDependency

NAME = "parallel-autopilot"
PACKAGE = Path(__file__).resolve().parent
_ENTRY_POINTS = "[console_scripts]\nparallel-autopilot = parallel_autopilot.program:main\n"


def wheel_name() -> str:
    return f"parallel_autopilot-{__version__}-py3-none-any.whl"


def _metadata_text() -> tuple[str, str]:
    """(METADATA, entry_points.txt) of the installed distribution, its version this package's."""
    try:
        dist = metadata.distribution(NAME)
    except metadata.PackageNotFoundError:
        raise MissingDependency(f"{NAME} is not installed here (only importable): install it "
                                "(pip install <checkout>, or pipx install parallel-autopilot), then run it again") from None
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    if not text.startswith("Metadata-Version"):
        raise MissingDependency(f"the installed {NAME} has no metadata: reinstall it")
    head, _, body = text.partition("\n\n")
    head = re.sub(r"(?m)^Version: .*$", f"Version: {__version__}", head)
    return f"{head}\n\n{body}", dist.read_text("entry_points.txt") or _ENTRY_POINTS


def build_wheel(directory: Path) -> Path:
    """Write the wheel of the running package into ``directory``; return its path."""
    meta, entry_points = _metadata_text()
    info = f"parallel_autopilot-{__version__}.dist-info"
    entries: list[tuple[str, bytes]] = [(f"parallel_autopilot/{p.relative_to(PACKAGE).as_posix()}", p.read_bytes())
                                        for p in package_files()]
    entries += [(f"{info}/METADATA", meta.encode()),
                (f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: parallel-autopilot\n"
                                  b"Root-Is-Purelib: true\nTag: py3-none-any\n"),
                (f"{info}/entry_points.txt", entry_points.encode())]
    record = "".join(f"{name},sha256={_digest(data)},{len(data)}\n" for name, data in entries) + f"{info}/RECORD,,\n"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / wheel_name()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in [*entries, (f"{info}/RECORD", record.encode())]:
            wheel.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data,
                           compress_type=zipfile.ZIP_DEFLATED)
    return path


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


__all__ = ["build_wheel", "package_files", "wheel_name"]
