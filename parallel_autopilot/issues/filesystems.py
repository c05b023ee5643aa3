"""The filesystem under a queue's state directory: SQLite's WAL needs one kernel.

Read from ``/proc/self/mountinfo``; standard library only (the stores check it in the agent
containers too). ``platform`` names these functions as well, with the host's other facts.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import UnsafeFilesystem


#: Filesystems where SQLite's WAL (shared memory across processes) is unsafe: network
#: filesystems and host-to-VM shares. Docker Desktop >= 4.15 shows a bind mount inside the
#: container as ``fakeowner`` (over virtiofs or gRPC FUSE); VirtualBox, Parallels and
#: VMware shares are ``vboxsf``, ``prl_fs`` and ``vmhgfs``; WSL1 Windows drives ``drvfs``.
UNSAFE_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "virtiofs", "fuse", "fakeowner",
                      "vboxsf", "prl_fs", "vmhgfs", "drvfs", "ceph", "glusterfs", "lustre", "afs", "gpfs")

def _unescape_mount_point(field: str) -> str:
    # the kernel writes space, tab, newline and backslash in mount points as octal escapes
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def filesystem_type(path: Path, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The type of the filesystem holding ``path`` (None where /proc is absent)."""
    try:
        lines = Path(mountinfo).read_text().splitlines()
    except OSError:
        return None
    target = os.path.realpath(path)
    best, best_type = "", None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        mount_point = _unescape_mount_point(fields[4])
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, right.split()[0]
    return best_type


def check_filesystem(directory: Path, mountinfo: str = "/proc/self/mountinfo") -> None:
    """Refuse a state directory on a network or FUSE filesystem (WAL needs one kernel)."""
    fstype = filesystem_type(directory, mountinfo)
    if fstype and (fstype in UNSAFE_FILESYSTEMS or fstype.startswith("fuse")):
        raise UnsafeFilesystem(
            f"state directory {directory} is on {fstype}, where SQLite WAL corrupts: "
            "set autopilot.state_dir to a directory on a local disk (ext4, xfs, apfs)"
        )
