"""The host's shape (OS, CPUs, RAM) and the per-agent limits it allows.

:func:`detect` reads the host with psutil; everything else is a pure function
over a :class:`Platform`, so the rules are tested exactly for a Linux
workstation, a 16 GiB MacBook and a 2-core CI machine. The refusal of a state
directory on a network or FUSE filesystem is the queue's own rule
(:mod:`.issues.filesystems`, named here too).

The rules (the design's targets, then what the host can really give):

- profile ``full`` (model CLIs): Linux 12g / 4 CPUs per agent, macOS 3g / 2 CPUs;
  profile ``light`` (``script`` agents, the demo, tests, benchmarks): 256m / 0.5 CPU;
  ``auto`` picks ``light`` for ``agent_kind: script`` and ``full`` otherwise.
- ``settings.memory`` / ``settings.cpus`` override the profile's values.
- CPUs are clamped to the CPUs Docker can use (it refuses ``--cpus 4`` on a
  2-CPU host); memory is clamped so one agent fits beside the reserve.
- At most 10 agents on Linux, 5 on macOS, and never more than
  ``(RAM - reserve) // memory per agent``; the reserve is RAM/16, between
  1 GiB and 4 GiB (128 GiB -> 10 agents of 12g, 16 GiB -> 5 of 3g).
  ``settings.max_agents`` overrides the maximum.
"""

from __future__ import annotations

import platform as _stdlib_platform
from dataclasses import asdict, dataclass
from typing import Any, Mapping, TYPE_CHECKING

from .defaults import TABLE, memory_bytes
from .errors import InvalidInput
from .issues.filesystems import UNSAFE_FILESYSTEMS, check_filesystem, filesystem_type  # noqa: F401 - named here too

if TYPE_CHECKING:  # for annotations only: this module needs nothing of config at run time
    from .config import Settings

KIB, MIB, GIB = 1024, 1024**2, 1024**3

#: per-agent (memory, cpus) of the ``full`` profile, by OS
FULL = {"linux": ("12g", 4.0), "macos": ("3g", 2.0)}
#: per-agent (memory, cpus) of the ``light`` profile, any OS
LIGHT = ("256m", 0.5)
#: most agents by OS (the compose file defines 10 services)
MAX_AGENTS = {"linux": 10, "macos": 5}
PROFILES = TABLE["profile"][2]  # the choices config.load checks: ("auto", "light", "full")
#: agent kinds that run a model CLI get the full profile under ``auto``
LIGHT_KINDS = frozenset({"script"})


@dataclass(frozen=True)
class Platform:
    """What the host has. ``docker_*`` are what Docker's VM/daemon reports, if known."""

    os: str  # "linux", "macos" or another platform.system() in lower case
    arch: str  # "x86_64", "arm64", ...
    cpus: int
    memory_total: int  # bytes
    memory_available: int  # bytes
    docker_cpus: int | None = None  # Docker Desktop's VM may have fewer than the host
    docker_memory: int | None = None

    @property
    def usable_cpus(self) -> int:
        """CPUs a container may be given (Docker refuses more than its NCPU)."""
        known = [c for c in (self.cpus, self.docker_cpus) if c]
        return min(known) if known else 1

    @property
    def usable_memory(self) -> int:
        """Memory the agents can share (host RAM, or Docker's VM if smaller)."""
        known = [m for m in (self.memory_total, self.docker_memory) if m]
        return min(known) if known else 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Limits:
    """Per-agent limits handed to compose, and the most agents this host takes."""

    memory: str  # docker notation, e.g. "12g", "256m"
    cpus: float
    pids: int
    max_agents: int
    profile: str  # "light" or "full" (never "auto")

    @property
    def memory_bytes(self) -> int:
        return parse_memory(self.memory)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "memory_bytes": self.memory_bytes}


def _os_name(system: str) -> str:
    system = system.lower()
    return "macos" if system == "darwin" else system


def detect(docker_info: Mapping[str, Any] | None = None) -> Platform:
    """The current host, read with psutil; ``docker_info`` is ``client.info()`` if known."""
    import psutil

    memory = psutil.virtual_memory()
    info = docker_info or {}
    return Platform(
        os=_os_name(_stdlib_platform.system()),
        arch=_stdlib_platform.machine() or "unknown",
        cpus=psutil.cpu_count(logical=True) or 1,
        memory_total=int(memory.total),
        memory_available=int(memory.available),
        docker_cpus=int(info["NCPU"]) if info.get("NCPU") else None,
        docker_memory=int(info["MemTotal"]) if info.get("MemTotal") else None,
    )


def parse_memory(value: Any) -> int:
    """Bytes of a docker memory value: ``12g``, ``512m``, ``1.5g``, ``65536k``, 1024.

    The rule is defaults.memory_bytes, the one config.load checks ``memory`` with:
    a value from Settings always parses; InvalidInput is for plain values (tests, the bench).
    """
    size = memory_bytes(value)
    if size is None:
        raise InvalidInput(f"memory {value!r} is not a size: use a value like 512m or 12g")
    return size


def format_memory(size: int) -> str:
    """Docker notation for ``size`` bytes, exact: ``12g``, ``768m``, ``1000k``."""
    for unit, factor in (("g", GIB), ("m", MIB), ("k", KIB)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def reserve(memory: int) -> int:
    """Memory kept for the host and Docker: RAM/16, between 1 GiB and 4 GiB."""
    return min(4 * GIB, max(GIB, memory // 16))


def profile_for(settings: Settings) -> str:
    """``light`` or ``full`` from ``settings.profile`` (``auto`` looks at agent_kind)."""
    profile = _get(settings, "profile", "auto")  # one of PROFILES: config.load checked it
    if profile == "auto":
        return "light" if _get(settings, "agent_kind", "script") in LIGHT_KINDS else "full"
    return profile


def limits(settings: Settings, platform: Platform | None = None) -> Limits:
    """Per-agent limits and the maximum agents for ``settings`` on ``platform``.

    The values are Settings' typed, checked ones (config.load refuses a bad memory size,
    cpus <= 0, pids_limit or max_agents < 1): nothing is validated again here.
    """
    platform = platform or detect()
    profile = profile_for(settings)
    memory_default, cpus_default = LIGHT if profile == "light" else FULL.get(platform.os, FULL["linux"])

    memory = parse_memory(_given(settings, "memory", memory_default))
    room = platform.usable_memory - reserve(platform.usable_memory)
    # a limit above what the host has would only look like a promise
    room = max(room, min(platform.usable_memory, 256 * MIB))
    memory = min(memory, room)

    cpus = min(float(_given(settings, "cpus", cpus_default)), float(platform.usable_cpus))
    pids = int(_given(settings, "pids_limit", 512))
    explicit_max = _get(settings, "max_agents")
    if explicit_max is not None:
        max_agents = int(explicit_max)
    else:
        max_agents = max(1, min(MAX_AGENTS.get(platform.os, MAX_AGENTS["linux"]), room // memory))
    return Limits(memory=format_memory(memory), cpus=_round_cpus(cpus), pids=pids,
                  max_agents=max_agents, profile=profile)


def _round_cpus(cpus: float) -> float:
    # Docker keeps NanoCPUs; two decimals are plenty and keep the value exact
    return round(cpus, 2)


def _given(settings: Settings, name: str, default: Any) -> Any:
    # None means "not set" (config.load turns an empty value into None)
    value = _get(settings, name)
    return default if value is None else value


def _get(settings: Settings, name: str, default: Any = None) -> Any:
    if isinstance(settings, Mapping):
        return settings.get(name, default)
    return getattr(settings, name, default)


__all__ = ["Platform", "Limits", "detect", "limits", "profile_for", "parse_memory",
           "format_memory", "reserve", "FULL", "LIGHT", "MAX_AGENTS", "UNSAFE_FILESYSTEMS",
           "filesystem_type", "check_filesystem"]
