"""containers/image.py: what goes into the image, when it is rebuilt, and the offline base."""

from __future__ import annotations

import io
import uuid
from importlib import metadata
from pathlib import Path

import pytest

from parallel_autopilot.errors import InvalidInput

from parallel_autopilot import config
from parallel_autopilot.containers import image
from parallel_autopilot.errors import ImageBuildError


@pytest.fixture
def settings(git_repo):
    return config.load(repo=git_repo)


# -- sources and context ------------------------------------------------------


def test_source_hash_is_stable_and_follows_the_build_arguments(settings):
    first = image.source_hash(settings)
    assert first == image.source_hash(settings)
    assert image.source_hash(settings.replace(agent_cli="codex")) != first
    assert image.source_hash(settings.replace(base_image="debian:12")) != first


def test_source_hash_covers_the_staged_python_libraries(settings, tmp_path):
    files = dict(image.python_lib_files())
    assert "pg8000/__init__.py" in files and "scramp/__init__.py" in files and "six.py" in files
    assert "scramp-1.5.0.dist-info/METADATA" in files or any(f.endswith(".dist-info/METADATA") and f.startswith("scramp")
                                                             for f in files)  # scramp reads its version
    assert not [f for f in files if "__pycache__" in f or f.endswith((".pyc", "/RECORD"))]
    first = image.source_hash(settings)
    changed = tmp_path / "__init__.py"
    changed.write_text(files["pg8000/__init__.py"].read_text() + "# another version\n")
    libs = sorted({**files, "pg8000/__init__.py": changed}.items())
    assert image.source_hash(settings, libs) != first


def test_build_context_stages_the_python_libraries(settings, tmp_path):
    context = image.build_context(settings.replace(cli_cache=str(tmp_path / "cache")), progress=lambda _: None)
    staged = context / image.PYLIB_DIR
    assert (staged / "pg8000" / "__init__.py").read_bytes() == dict(image.python_lib_files())[
        "pg8000/__init__.py"].read_bytes()
    assert (staged / "README.md").is_file() and (context / image.DOCKERFILE).is_file()
    assert not (context / "tests").exists() and not (context / ".git").exists()


def test_unknown_agent_cli_is_refused(settings):
    # checked once, where the Settings is built
    with pytest.raises(InvalidInput, match="agent_cli.*'emacs'"):
        settings.replace(agent_cli="emacs")


def test_build_context_is_only_the_installed_package_and_its_dockerfile(settings, tmp_path):
    context = image.build_context(settings.replace(cli_cache=str(tmp_path / "cache")), progress=lambda _: None)
    files = {p.relative_to(context).as_posix() for p in context.rglob("*") if not p.is_dir()}
    assert image.DOCKERFILE in files and "parallel_autopilot/__init__.py" in files
    assert (context / image.DOCKERFILE).read_bytes() == image.dockerfile().read_bytes()
    # the agent-cli placeholder: `build --cli` stages the CLIs there; pylib: the PostgreSQL driver
    unexpected = {f for f in files if not f.startswith(("parallel_autopilot/", "pylib/"))} - {
        image.DOCKERFILE, "agent-cli/README.md"}
    assert unexpected == set()
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc") or ".egg-info" in f]
    # the package in the context is the installed package, file for file
    package = {p.relative_to(image._PACKAGE).as_posix() for p in image.package_files()}
    assert {f[len("parallel_autopilot/"):] for f in files if f.startswith("parallel_autopilot/")} == package


def test_dockerfile_and_compose_file_are_package_data_not_checkout_files():
    package = Path(image.__file__).resolve().parents[1]
    assert image.dockerfile().is_relative_to(package)
    from parallel_autopilot.containers import compose
    assert compose.compose_file().is_relative_to(package) and compose.compose_file().is_file()


def test_dockerfile_bakes_no_credentials_and_runs_the_runtime():
    text = image.dockerfile().read_text()
    # the agent CLIs (hundreds of MB) come before the package: a package edit never copies them again
    assert text.index("COPY agent-cli") < text.index("COPY parallel_autopilot")
    assert "npm install" not in text and "apt-get install -y --no-install-recommends ca-certificates $missing" in text
    assert "ARG BASE_IMAGE=python:3.11-slim" in text
    assert "ARG AGENT_CLI=none" in text
    assert 'CMD ["python3", "-m", "parallel_autopilot.runtime"]' in text
    assert '"python3", "-m", "parallel_autopilot.runtime.health"' in text
    assert "safe.directory '*'" in text
    for secret in ("API_KEY", ".codex", ".ssh", "auth.json", "TOKEN"):
        assert secret not in text.replace("/run/credentials", "")


@pytest.mark.parametrize("name, parts", [("python:3.11-slim", ("python", "3.11-slim")),
                                         ("debian", ("debian", "latest")),
                                         ("localhost:5000/base", ("localhost:5000/base", "latest")),
                                         ("localhost:5000/base:1", ("localhost:5000/base", "1"))])
def test_split_tag(name, parts):
    assert image._split_tag(name) == parts


# -- decisions, over a fake Docker ----------------------------------------------


class FakeImages:
    def __init__(self, present):
        self.present = dict(present)  # name -> labels

    def get(self, name):
        from docker.errors import ImageNotFound

        if name not in self.present:
            raise ImageNotFound(name)
        return type("Image", (), {"attrs": {"Config": {"Labels": self.present[name]}}, "id": name})()


class FakeClient:
    """A Docker client that knows which images are present (name -> labels)."""

    def __init__(self, present=()):
        self.images = FakeImages(dict(present))


def test_ensure_image_skips_a_current_image_and_rebuilds_a_stale_one(settings):
    built, lines = [], []

    def ensure(settings, client, **kwargs):  # over a fake Docker, with a builder that only records
        return image.ensure_image(settings, progress=lines.append, client=client,
                                  builder=lambda s, progress=print: built.append(s.image), **kwargs)

    client = FakeClient({settings.image: {image.LABEL_HASH: image.source_hash(settings)}})
    ensure(settings, client)
    assert built == [] and lines == [f"image {settings.image} is up to date"]

    client = FakeClient({settings.image: {image.LABEL_HASH: "old"}})
    ensure(settings, client)
    assert built == [settings.image] and "stale" in lines[-1]

    client = FakeClient({})
    ensure(settings, client)
    assert len(built) == 2 and "missing" in lines[-1]
    ensure(settings.replace(), client, rebuild=True)
    assert len(built) == 3


def test_base_image_present_is_used_as_it_is(settings):
    client = FakeClient({"python:3.11-slim": {}})

    def puller(*a, **k):
        pytest.fail("must not pull a present image")

    assert image.base_image(settings, progress=lambda _: None, client=client, puller=puller) == "python:3.11-slim"


def test_unpullable_base_falls_back_to_the_offline_base(settings):
    client = FakeClient({})
    lines = []
    assert image.base_image(settings, progress=lines.append, client=client,
                            puller=lambda name, progress=print: "lookup registry-1.docker.io: no such host",
                            offline=lambda progress=print: image.OFFLINE_BASE) == image.OFFLINE_BASE
    assert lines == [f"cannot pull python:3.11-slim (lookup registry-1.docker.io: no such host): "
                     f"using the offline base {image.OFFLINE_BASE}"]


def test_offline_base_is_reused_when_it_exists():
    client = FakeClient({image.OFFLINE_BASE: {}})

    def no_popen(*a, **k):
        raise AssertionError("debootstrap must not run again")

    assert image.offline_base(progress=lambda _: None, popen=no_popen, client=client) == image.OFFLINE_BASE


def test_offline_base_without_debootstrap_names_the_fix():
    with pytest.raises(ImageBuildError, match="apt-get install debootstrap"):
        image.offline_base(progress=lambda _: None, client=FakeClient({}), which=lambda name: None)


def test_offline_base_needs_root():
    with pytest.raises(ImageBuildError, match="needs root"):
        image.offline_base(progress=lambda _: None, client=FakeClient({}),
                           which=lambda name: "/usr/sbin/debootstrap", euid=lambda: 1000)


class FakePopen:
    """debootstrap that prints some lines and fails."""

    calls = []

    def __init__(self, argv, **kwargs):
        FakePopen.calls.append(argv)
        self.stdout = io.StringIO("I: Retrieving InRelease\nI: Checking Release signature\n"
                                  "E: Failed getting release file http://deb.debian.org/debian/dists/bookworm/Release\n")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def wait(self):
        return 1


def test_failing_debootstrap_is_one_line_and_leaves_no_tree(tmp_path):
    lines = []
    with pytest.raises(ImageBuildError, match=r"debootstrap failed \(E: Failed getting release file .*\): check"):
        image.offline_base(progress=lines.append, popen=FakePopen, workdir=tmp_path, client=FakeClient({}),
                           which=lambda name: "/usr/sbin/debootstrap", euid=lambda: 0)
    argv = FakePopen.calls[-1]
    assert argv[:3] == ["debootstrap", "--variant=minbase", "--include=python3,git,ca-certificates"]
    assert argv[3] == "bookworm"
    assert list(tmp_path.iterdir()) == []  # the half-made tree is gone
    assert not any("Retrieving" in line for line in lines)  # per-package noise is dropped


# -- the real thing -------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_offline_build_gives_a_labelled_image_that_runs_as_any_uid(settings):
    from parallel_autopilot.containers import daemon as docker_client

    lines = []
    image.ensure_image(settings, progress=lines.append)  # builds the offline base once per machine
    client = docker_client.client()
    assert image.image_status(settings, client) == "current"
    again = []
    image.ensure_image(settings, progress=again.append)
    assert again == [f"image {settings.image} is up to date"]

    attrs = client.images.get(settings.image).attrs["Config"]
    assert attrs["User"] == "10001:10001"
    assert attrs["Cmd"] == ["python3", "-m", "parallel_autopilot.runtime"]
    assert attrs["Healthcheck"]["Test"] == ["CMD", "python3", "-m", "parallel_autopilot.runtime.health"]
    env = dict(item.split("=", 1) for item in attrs["Env"])
    assert env["PYTHONPATH"] == "/opt/parallel-autopilot:/opt/autopilot-pylib" and env["HOME"] == "/home/agent"
    assert not [k for k in env if any(word in k for word in ("KEY", "TOKEN", "SECRET", "PASSWORD"))]

    script = ("set -e; touch $HOME/written; id -u; git --version >/dev/null; "
              "git config --system --get-all safe.directory; "
              "python3 -c 'import parallel_autopilot.issues, parallel_autopilot.git; print(\"stdlib-ok\")'; "
              # the PostgreSQL driver, staged from the host's installation (no network here either)
              "python3 -c 'import pg8000, parallel_autopilot.issues.postgres; print(\"pg8000-\" + pg8000.__version__)'; "
              "ls /opt/parallel-autopilot; test ! -e /opt/parallel-autopilot/tests; "
              "test -z \"$(ls -A /root 2>/dev/null)\" && echo no-root-secrets")
    out = client.containers.run(settings.image, ["sh", "-c", script], user="12345:12345", remove=True,
                                network_mode="none", mem_limit="128m", nano_cpus=500_000_000,
                                name=f"pa-test-image-{uuid.uuid4().hex[:8]}").decode().split()
    assert out == ["12345", "*", "stdlib-ok", f"pg8000-{metadata.version('pg8000')}", "parallel_autopilot",
                   "no-root-secrets"]


@pytest.mark.docker
def test_pull_of_an_unreachable_registry_returns_the_reason(settings):
    reason = image.pull(f"pa-no-such-registry-{uuid.uuid4().hex[:6]}.invalid/base:1", progress=lambda _: None)
    assert reason and "\n" not in reason



class FakeBuildApi:
    def __init__(self, chunks):
        self.chunks = chunks
        self.kwargs = None

    def build(self, **kwargs):
        self.kwargs = kwargs
        return iter(self.chunks)


def test_a_failing_run_step_is_one_line_with_the_last_real_output(settings, tmp_path):
    api = FakeBuildApi([
        {"stream": "Step 5/13 : RUN set -eu; npm install -g @openai/codex\n"},
        {"stream": " ---> Running in 12ae927ba4bc\n"},
        {"stream": "\x1b[91mnpm ERR! request to https://registry.npmjs.org/@openai%2fcodex failed\x1b[0m\n"},
        {"stream": "Removing intermediate container 12ae927ba4bc\n"},
        {"error": "The command '/bin/sh -c set -eu;\n npm install -g @openai/codex' returned a non-zero code: 1",
         "errorDetail": {"message": "The command '/bin/sh -c set -eu;\n npm install -g @openai/codex' "
                                    "returned a non-zero code: 1"}},
    ])
    lines = []
    with pytest.raises(ImageBuildError) as err:
        image._stream_build(api, settings, image.FILES, image.dockerfile(), "base:1", {}, False,
                            lines.append)
    assert str(err.value) == (f"building {settings.image} failed: a RUN step exited with 1 (last output: "
                              "npm ERR! request to https://registry.npmjs.org/@openai%2fcodex failed): "
                              "see the output above")
    assert api.kwargs["buildargs"] == {"BASE_IMAGE": "base:1", "AGENT_CLI": "none"}
    assert api.kwargs["dockerfile"] == image.DOCKERFILE and api.kwargs["pull"] is False
    assert all("\x1b" not in line for line in lines)
