"""The real agent CLIs: pinned versions, the host-side npm cache, image staging, preflight.

Codex CLI and Claude Code are npm packages that ship NATIVE binaries (a static
musl ``codex``, a glibc ``claude``): node is needed only to fetch them, never
to run them. npm inside ``docker build`` cannot be trusted to reach the
registry (a TLS-intercepting proxy, a host-only certificate, no network at
all), so the HOST fetches each pinned package once with ``npm install
--prefix <cache>/<cli>-<version>`` (:func:`fetch`), and :func:`stage` lays out
only the binaries the image needs in the build context::

    agent-cli/codex/...          the package's vendor/<triple>/ (codex, rg, resources)
    agent-cli/claude/claude      the native binary
    agent-cli/bin/codex -> ../codex/bin/codex   (relative links: COPY keeps them)

The Dockerfile COPYs that directory in one layer before the package layer, and
the image carries a label per CLI (``parallel-autopilot.cli.codex=0.171.0``)
that :func:`preflight` reads before ``agents.start`` creates anything.
"""

from __future__ import annotations

import os
import platform as host_platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

from ..errors import ImageBuildError, InvalidInput

if TYPE_CHECKING:  # for annotations only: this module needs nothing of config at run time
    from ..config import Settings

#: The versions tested end to end (tests/containers/test_agent_clis_real.py). Change both together.
PINS: dict[str, tuple[str, str]] = {
    "codex": ("@openai/codex", "0.171.0"),
    "claude": ("@anthropic-ai/claude-code", "2.1.197"),
}
#: ``agent_cli`` values: which CLIs go into the image
CHOICES = ("none", "codex", "claude", "all")
MODEL_KINDS = ("codex", "claude")
LABEL_PREFIX = "parallel-autopilot.cli."
#: the build-context directory the Dockerfile COPYs (a placeholder is committed there)
CONTEXT_DIR = "agent-cli"
DEFAULT_CACHE = "~/.cache/parallel-autopilot/cli"

Runner = Callable[..., subprocess.CompletedProcess]


def clis(choice: str | None) -> list[str]:
    """The CLIs an ``agent_cli`` value asks for: ``all`` is both, ``none`` none."""
    value = str(choice or "none").strip().lower()
    if value not in CHOICES:
        raise InvalidInput(f"agent_cli {choice!r} is unknown: use none, codex, claude or all")
    if value == "all":
        return list(MODEL_KINDS)
    return [] if value == "none" else [value]


def labels(choice: str | None) -> dict[str, str]:
    """The image labels naming each installed CLI's pinned version."""
    return {LABEL_PREFIX + cli: PINS[cli][1] for cli in clis(choice)}


def cache_root(settings: Settings | None = None) -> Path:
    value = settings.cli_cache if settings is not None else None
    return Path(os.path.expanduser(str(value or os.environ.get("AUTOPILOT_CLI_CACHE") or DEFAULT_CACHE)))


def _triple() -> tuple[str, str]:
    """(codex vendor triple, npm platform suffix) for this machine."""
    machine = host_platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        return "x86_64-unknown-linux-musl", "linux-x64"
    if machine in ("aarch64", "arm64"):
        return "aarch64-unknown-linux-musl", "linux-arm64"
    raise ImageBuildError(f"no agent CLI binaries for {machine}: use an x86_64 or arm64 Linux host")


@dataclass(frozen=True)
class Installed:
    cli: str
    version: str
    prefix: Path

    def binary_dir(self) -> Path:
        """What goes into the image for this CLI (a directory)."""
        triple, suffix = _triple()
        modules = self.prefix / "node_modules"
        if self.cli == "codex":
            return modules / "@openai" / f"codex-{suffix}" / "vendor" / triple
        return modules / "@anthropic-ai" / f"claude-code-{suffix}"

    def executable(self) -> Path:
        if self.cli == "codex":
            return self.binary_dir() / "bin" / "codex"
        return self.binary_dir() / "claude"


def installed(cli: str, settings: Settings | None = None) -> Installed:
    package, version = PINS[cli]
    return Installed(cli, version, cache_root(settings) / f"{cli}-{version}")


def fetch(cli: str, settings: Settings | None = None, progress: Callable[[str], None] = print,
          runner: Runner = subprocess.run, which: Callable[[str], str | None] = shutil.which) -> Installed:
    """The pinned CLI in the host cache, installed with npm when missing (idempotent)."""
    found = installed(cli, settings)
    if found.executable().is_file():
        return found
    package, version = PINS[cli]
    npm = which("npm")
    if npm is None:
        raise ImageBuildError(f"npm is missing on this host, and {package}@{version} is not in "
                              f"{found.prefix.parent}: apt-get install npm (or run scripts/bootstrap.sh)")
    staging = found.prefix.with_name(found.prefix.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    progress(f"fetching {package}@{version} with npm into {found.prefix}")
    proc = runner([npm, "install", "--prefix", str(staging), "--no-audit", "--no-fund", "--no-save",
                   "--loglevel", "error", f"{package}@{version}"], capture_output=True, text=True)
    if proc.returncode != 0:
        last = " ".join((proc.stderr or proc.stdout or "").split())[-200:]
        shutil.rmtree(staging, ignore_errors=True)
        raise ImageBuildError(f"npm install {package}@{version} failed ({last or proc.returncode}): "
                              "check `npm ping` and npm's proxy/cafile settings on this host")
    fetched = Installed(cli, version, staging)
    if not fetched.executable().is_file():
        shutil.rmtree(staging, ignore_errors=True)
        raise ImageBuildError(f"{package}@{version} has no native binary for this machine "
                              f"({fetched.executable()}): is npm skipping optional dependencies?")
    shutil.rmtree(found.prefix, ignore_errors=True)
    staging.rename(found.prefix)  # atomic: a half-finished install is never taken for a cache hit
    return found


def stage(choice: str | None, target: Path, settings: Settings | None = None,
          progress: Callable[[str], None] = print) -> list[Installed]:
    """Fill ``target`` (the context's agent-cli directory) with the chosen CLIs' binaries.

    Files are hard-linked from the cache where possible (same file system), so
    staging ~650 MB costs nothing; modes and mtimes are the cache's, so an
    unchanged CLI gives the same COPY layer on every build.
    """
    done = []
    bin_dir = target / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for cli in clis(choice):
        found = fetch(cli, settings, progress)
        _link_tree(found.binary_dir(), target / cli)
        relative = Path("..") / cli / found.executable().relative_to(found.binary_dir())
        link = bin_dir / cli
        if not (link.is_symlink() and os.readlink(link) == str(relative)):
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(relative)
        version = target / f"{cli}.version"
        if not (version.is_file() and version.read_text() == found.version + "\n"):
            version.write_text(found.version + "\n")
        os.utime(version, (0, 0))
        done.append(found)
    os.utime(bin_dir, (0, 0))
    return done


def _link_tree(source: Path, target: Path) -> None:
    def link(src, dst):
        if os.path.exists(dst) and os.path.samefile(src, dst):
            return dst  # staged by an earlier build
        if os.path.lexists(dst):
            os.unlink(dst)
        try:
            os.link(src, dst)
        except OSError:  # another file system: a copy (mode and mtime kept)
            shutil.copy2(src, dst)
        return dst
    shutil.copytree(source, target, symlinks=True, copy_function=link, dirs_exist_ok=True)
    # directories get a fresh mtime from copytree: pin it, so the COPY cache key stays the same
    for path in [target, *target.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            os.utime(path, (0, 0))


# -- preflight ----------------------------------------------------------------

CREDENTIAL_KEYS = _KEYS = {
    "codex": ("OPENAI_API_KEY", "CODEX_API_KEY"),
    "claude": ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN"),
}
_LOOPBACK = ("127.", "localhost", "[::1]", "::1")


def env_file_keys(path: Path | None) -> dict[str, str]:
    """KEY=VALUE lines of an env file (values never printed)."""
    if path is None or not path.is_file():
        return {}
    keys = {}
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        keys[key.strip().removeprefix("export ").strip()] = value.strip()
    return keys


def _host(url: str) -> str:
    rest = url.split("://", 1)[-1]
    return rest.split("/", 1)[0].rsplit(":", 1)[0] if not rest.startswith("[") else rest.split("]")[0] + "]"


def endpoint(settings: Settings, kind: str) -> str | None:
    key = "openai_base_url" if kind == "codex" else "anthropic_base_url"
    value = getattr(settings, key)
    return str(value).strip() or None if value else None


def credentials(settings: Settings, kind: str) -> str | None:
    """Where the kind's credentials come from (a description), or None when there are none."""
    env_path = settings.path("env_file") if settings.env_file else None
    keys = env_file_keys(env_path)
    for key in _KEYS[kind]:
        if keys.get(key):
            return f"{key} in {env_path}"
    if kind == "codex" and settings.codex_home:
        auth = settings.path("codex_home") / "auth.json"
        if auth.is_file() and auth.stat().st_size > 0:
            return str(auth)
    return None


def preflight(settings: Settings, image_labels: Mapping[str, str] | None, count: int = 1) -> list[str]:
    """Refuse (InvalidInput, one line naming the fix) a model kind that cannot work; warnings.

    ``image_labels`` are the labels of the image that will run (None: it will
    be built from these settings now, so its CLI labels are :func:`labels`).
    """
    kind = str(settings.agent_kind)
    if kind not in MODEL_KINDS:
        return []
    package, version = PINS[kind]
    found = (image_labels or {}).get(LABEL_PREFIX + kind) if image_labels is not None \
        else labels(settings.agent_cli).get(LABEL_PREFIX + kind)
    if found is None:
        raise InvalidInput(f"agent kind {kind} needs {package} in the image {settings.image}, which has none: "
                           f"set autopilot.agent_cli to {kind} or all and run `inv build --cli {kind}`")
    if found != version:
        raise InvalidInput(f"the image {settings.image} has {package} {found}, but {version} is pinned: "
                           f"rebuild it (`inv build --cli {kind} --rebuild`)")
    source = credentials(settings, kind)
    if source is None:
        keys = " or ".join(_KEYS[kind])
        where = ", or log in so that autopilot.codex_home holds auth.json" if kind == "codex" else ""
        raise InvalidInput(f"agent kind {kind} has no credentials: put {keys} into the file named by "
                           f"autopilot.env_file{where}")
    url = endpoint(settings, kind)
    network = str(settings.network)
    if network == "none" and not (url and _host(url).startswith(_LOOPBACK)):
        what = "openai_base_url" if kind == "codex" else "anthropic_base_url"
        raise InvalidInput(f"agent kind {kind} cannot reach its model with network none: set autopilot.network "
                           f"to bridge (or host), or autopilot.{what} to a server on the container's loopback")
    warnings = []
    if count > 1 and source.endswith("auth.json"):
        # each agent refreshes its own copy; the provider rotates the refresh token on use
        warnings.append(f"warning: {count} codex agents share ONE login ({source}): its refresh token is "
                        "single use, so one agent's refresh logs the others out: use an API key "
                        "(OPENAI_API_KEY in autopilot.env_file), or one login per agent")
    if count > 1 and source.startswith("CLAUDE_CODE_OAUTH_TOKEN"):
        warnings.append(f"warning: {count} claude agents share ONE subscription token (CLAUDE_CODE_OAUTH_TOKEN): "
                        "they share its usage limit, and a shared OAuth login races on refresh "
                        "(anthropics/claude-code#43392): use ANTHROPIC_API_KEY, or one token per agent")
    return warnings


def main(argv: list[str] | None = None) -> int:
    """``python3 -m parallel_autopilot.containers.agentcli [codex|claude|all]``: fill the host cache (bootstrap.sh)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    try:
        for cli in clis(args[0] if args else "all"):
            found = fetch(cli, progress=lambda line: print(f"agent CLIs: {line}"))
            print(f"agent CLIs: {PINS[cli][0]}@{found.version} in {found.prefix}")
    except (ImageBuildError, InvalidInput) as err:
        print(f"agent CLIs: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["PINS", "CHOICES", "clis", "labels", "fetch", "stage", "preflight", "credentials", "cache_root"]
