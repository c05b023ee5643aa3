"""A fake Docker daemon and a fake compose for a REAL ``Fleet`` (tests without Docker).

``FakeDocker`` answers what the Fleet asks the Docker SDK (``ping``,
``containers.list(all=, filters=)``, ``images.get``) with containers shaped as
the SDK gives them: ``labels``, ``name`` and ``attrs`` with ``State``
(``Status``, ``StartedAt``, ``ExitCode``, ``Health``), ``RestartCount`` and
``Image``. ``FakeCompose`` is the ``runner`` under ``compose.run``: it gets the
real command line and environment and creates, stops, removes and restarts
those containers on ``up -d``, ``stop``, ``rm -f`` and ``restart``. Its
``boot`` hook plays the runtime's first act in a new container (report in,
release the old claims), as the real one does.

Beside the real-Docker tests (tests/fleet/test_fleet_docker.py), never instead.
"""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

from parallel_autopilot import fleet
from parallel_autopilot.containers import agentcli
from parallel_autopilot.containers import compose
from parallel_autopilot.errors import DockerUnavailable

IMAGE_ID = "sha256:" + "f" * 64


def _stamp(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


class FakeContainer:
    def __init__(self, project: str, agent: str, image: str, started: float):
        self.name = f"{project}_{agent}_1"
        # the gateway service has a role, not an agent id
        role = {fleet.LABEL_ROLE: agent} if agent == compose.GATEWAY else {fleet.LABEL_AGENT: agent}
        self.labels = {fleet.LABEL_PROJECT: project, **role,
                       "com.docker.compose.project": project, "com.docker.compose.service": agent}
        self.attrs = {"Image": image, "RestartCount": 0,
                      "State": {"Status": "running", "ExitCode": 0, "OOMKilled": False,
                                "StartedAt": _stamp(started), "Health": {"Status": "healthy"}}}

    @property
    def status(self) -> str:
        return self.attrs["State"]["Status"]


class FakeImage:
    def __init__(self, ident: str, labels: dict):
        self.id = ident
        self.attrs = {"Id": ident, "Config": {"Labels": dict(labels)}}


class _Containers:
    def __init__(self, docker: "FakeDocker"):
        self.docker = docker

    def list(self, all: bool = False, filters: dict | None = None):  # noqa: A002 - the SDK's names
        self.docker.check()
        wanted = dict(f.split("=", 1) for f in _as_list((filters or {}).get("label")))
        with self.docker.lock:
            found = [c for c in self.docker.containers_by_name.values()
                     if all or c.status == "running"]
        return [c for c in found if _matches(c, wanted)]


def _matches(container: FakeContainer, wanted: dict) -> bool:
    return all(container.labels.get(k) == v for k, v in wanted.items())


def _as_list(value) -> list:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


class _Images:
    def __init__(self, docker: "FakeDocker"):
        self.docker = docker

    def get(self, name: str) -> FakeImage:
        self.docker.check()
        with self.docker.lock:
            found = self.docker.images_by_name.get(name)
        if found is None:
            import docker.errors

            raise docker.errors.ImageNotFound(f"No such image: {name}")
        return found


class FakeDocker:
    """The Docker SDK client as the Fleet uses it; ``down = True`` is a daemon that went away."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock
        self.lock = threading.RLock()
        self.down = False
        self.containers_by_name: dict[str, FakeContainer] = {}
        self.images_by_name: dict[str, FakeImage] = {}
        self.containers = _Containers(self)
        self.images = _Images(self)
        self.builds = 0

    def check(self) -> None:
        if self.down:
            raise DockerUnavailable("Docker is not reachable: start dockerd (or Docker Desktop) and retry")

    def ping(self) -> bool:
        self.check()
        return True

    def ensure_image(self, settings, progress=print, rebuild: bool = False) -> str:
        """The Fleet's image step: the image is "built" into this daemon, labelled like containers/image.py's."""
        self.check()
        with self.lock:
            if rebuild or str(settings.image) not in self.images_by_name:
                self.builds += 1
                found = FakeImage(IMAGE_ID, agentcli.labels(settings.agent_cli))
                self.images_by_name[str(settings.image)] = self.images_by_name[IMAGE_ID] = found
        progress(f"image ready: {settings.image}")
        return str(settings.image)

    def agents(self, project: str | None = None) -> dict[str, FakeContainer]:
        """agent id -> container (of ``project``, or all); not the gateway."""
        return {name: c for name, c in self.services(project).items() if fleet.LABEL_AGENT in c.labels}

    def services(self, project: str | None = None) -> dict[str, FakeContainer]:
        """compose service (agent id or ``gateway``) -> container (of ``project``, or all)."""
        with self.lock:
            return {c.labels["com.docker.compose.service"]: c for c in self.containers_by_name.values()
                    if project is None or c.labels[fleet.LABEL_PROJECT] == project}


class FakeCompose:
    """``runner`` for ``compose.run``: acts the command line out on a FakeDocker.

    ``calls`` records each command's arguments (after the files); ``envs`` the
    environment it was given. ``gate``, when set to an Event, holds ``up``
    until it is set (an operation in progress). ``boot(agent)`` runs when a
    container (re)starts: the runtime's own first report.
    """

    def __init__(self, docker: FakeDocker, boot: Callable[[str], None] | None = None):
        self.docker = docker
        self.boot = boot
        self.calls: list[list[str]] = []
        self.envs: list[dict] = []
        self.gate: threading.Event | None = None

    def __call__(self, line, env=None, text=True, timeout=None, capture_output=True, **_):
        project, args = _parse(line)
        self.calls.append(args)
        self.envs.append(dict(env or {}))
        verb, rest = args[0], [a for a in args[1:] if re.match(r"^agent-\d{3}$", a) or a == compose.GATEWAY]
        if self.docker.down:
            return subprocess.CompletedProcess(line, 1, "", "Cannot connect to the Docker daemon\n")
        if verb == "up" and self.gate is not None:
            self.gate.wait(30)
        booted = []
        with self.docker.lock:
            by_agent = self.docker.services(project)
            for agent in rest:
                container = by_agent.get(agent)
                if verb == "up" and (container is None or container.status != "running"):
                    if container is not None:
                        del self.docker.containers_by_name[container.name]
                    image = self.docker.images_by_name.get(env.get("AUTOPILOT_IMAGE", ""))
                    made = FakeContainer(project, agent, image.id if image else "sha256:missing", self.docker.clock())
                    self.docker.containers_by_name[made.name] = made
                    booted.append(agent)
                elif verb == "stop" and container is not None:
                    container.attrs["State"].update(Status="exited", ExitCode=0, Health={"Status": "unhealthy"})
                elif verb == "rm" and container is not None:
                    del self.docker.containers_by_name[container.name]
                elif verb == "restart" and container is not None:
                    container.attrs["State"].update(Status="running", ExitCode=0, StartedAt=_stamp(self.docker.clock()),
                                                    Health={"Status": "healthy"})
                    booted.append(agent)
        for agent in booted:
            if self.boot is not None and agent != compose.GATEWAY:
                self.boot(agent)
        return subprocess.CompletedProcess(line, 0, "", "")


def _parse(line) -> tuple[str, list[str]]:
    """(project, the arguments after the compose files) of a compose command line."""
    line = [str(part) for part in line]
    project = line[line.index("-p") + 1]
    i = line.index("-p") + 2
    while i < len(line) and line[i] == "-f":
        i += 2
    return project, line[i:]


def runtime_boot(store_of: Callable[[], object]) -> Callable[[str], None]:
    """What the real runtime does first in a new container: release its old claims, report idle."""

    def boot(agent: str) -> None:
        store = store_of()
        store.release_agent(agent, reason="restarted: released by the new incarnation")
        store.agent_heartbeat(agent, "idle")

    return boot


def fake_fleet(settings, *, clock: Callable[[], float] = time.time) -> tuple[fleet.Fleet, FakeDocker, FakeCompose]:
    """A real Fleet over a FakeDocker and a FakeCompose whose containers boot like the runtime."""
    docker = FakeDocker(clock)
    runner = FakeCompose(docker, boot=runtime_boot(lambda: fleet.store_for(settings)))
    return fleet.Fleet.open(settings, runner=runner, docker=docker, clock=clock,
                            ensure_image=docker.ensure_image), docker, runner


def compose_variables() -> set[str]:
    """Every ``${VARIABLE}`` the compose file reads."""
    lines = [line.split("#", 1)[0] for line in Path(compose.compose_file()).read_text().splitlines()]
    return set(re.findall(r"\$\{([A-Z_]+)", "\n".join(lines)))
