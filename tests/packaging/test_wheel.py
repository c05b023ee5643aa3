"""Installed like any tool (issue 20): the wheel and sdist that `python -m build` makes, installed
into a fresh virtual environment OUTSIDE the checkout and run from a directory far from it.

`python -m build` makes the sdist, then the wheel FROM the sdist: a file the sdist lacks is
missing from the wheel too. The venv has no access to the checkout (no PYTHONPATH, no
system site-packages, run from a temporary directory), so what works here works for a user of
`pipx install` / `uv tool install` / `pip install`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
from support.images import BUILT_TEST_IMAGES

import parallel_autopilot
from parallel_autopilot.containers import image

pytestmark = [pytest.mark.slow]

CHECKOUT = Path(parallel_autopilot.__file__).resolve().parents[1]
#: what the tool reads at run time besides its modules
RUNTIME_DATA = ("parallel_autopilot/containers/files/Dockerfile",
                "parallel_autopilot/containers/files/docker-compose.yml",
                "parallel_autopilot/containers/files/agent-cli/README.md",
                "parallel_autopilot/containers/files/pylib/README.md",
                "parallel_autopilot/gui/static/index.html")


@pytest.fixture(scope="session")
def dist(tmp_path_factory) -> dict[str, Path]:
    """{"wheel": ..., "sdist": ...} built by `python -m build` from this checkout."""
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(CHECKOUT)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return {"wheel": next(out.glob("*.whl")), "sdist": next(out.glob("*.tar.gz"))}


@pytest.fixture(scope="session")
def venv(dist, tmp_path_factory) -> Path:
    """A fresh venv (no system site-packages) with the wheel installed; its bin directory."""
    where = tmp_path_factory.mktemp("venv") / "tool"
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, timeout=300)
    # from far away, without PYTHONPATH: pip run in the checkout takes its .egg-info for an install
    proc = subprocess.run([str(where / "bin" / "python"), "-m", "pip", "install", "-q",
                           "--disable-pip-version-check", str(dist["wheel"])], cwd=where,
                          env=clean_env(where / "bin"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (where / "bin" / "parallel-autopilot").is_file(), proc.stdout[-3000:]
    return where / "bin"


@pytest.fixture(scope="session")
def far(tmp_path_factory) -> Path:
    """A working directory with nothing of the checkout in it or above it."""
    path = tmp_path_factory.mktemp("far-away")
    assert not path.resolve().is_relative_to(CHECKOUT)
    return path


def clean_env(bin_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME") and not k.startswith("INVOKE_AUTOPILOT_")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def tool(bin_dir: Path, *args: str, cwd: Path, env: dict | None = None, timeout: float = 600,
         check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(bin_dir / "parallel-autopilot"), *args], cwd=cwd, env=env or clean_env(bin_dir),
                          capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def checkout_package_files() -> set[str]:
    listed = subprocess.run(["git", "-C", str(CHECKOUT), "ls-files", "parallel_autopilot"], capture_output=True,
                            text=True, check=True).stdout.split()
    return {name for name in listed if (CHECKOUT / name).is_file()}


def test_the_wheel_and_the_sdist_hold_every_file_of_the_package(dist):
    wheel = set(zipfile.ZipFile(dist["wheel"]).namelist())
    with tarfile.open(dist["sdist"]) as sdist:
        in_sdist = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    tracked = checkout_package_files()
    assert tracked - wheel == set(), "files of the package the wheel lacks"
    assert tracked - in_sdist == set(), "files of the package the sdist lacks"
    assert set(RUNTIME_DATA) <= wheel
    assert {"pyproject.toml", "README.md"} <= in_sdist
    assert dist["wheel"].name == f"parallel_autopilot-{parallel_autopilot.__version__}-py3-none-any.whl"
    entry_points = next(n for n in wheel if n.endswith(".dist-info/entry_points.txt"))
    assert "parallel-autopilot = parallel_autopilot.program:main" in \
        zipfile.ZipFile(dist["wheel"]).read(entry_points).decode()


def test_the_installed_wheel_runs_from_far_away_and_says_its_version(venv, far):
    out = tool(venv, "--version", cwd=far).stdout
    assert parallel_autopilot.__version__ in out
    probe = subprocess.run(
        [str(venv / "python"), "-c",
         "import json, parallel_autopilot as p; from parallel_autopilot.containers import image, compose; "
         "print(json.dumps([p.__file__, str(image.dockerfile()), str(compose.compose_file())]))"],
        cwd=far, env=clean_env(venv), capture_output=True, text=True, check=True)
    package, dockerfile, compose_file = json.loads(probe.stdout)
    site = venv.parent
    # the package and its data come from the venv, never from the checkout
    for path in (package, dockerfile, compose_file):
        assert Path(path).is_relative_to(site) and Path(path).is_file(), path
    assert "agents.start" in tool(venv, "--list", cwd=far).stdout
    # a task needing a repository says so in one line outside one
    refused = tool(venv, "issues.list", cwd=far, check=False)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_the_image_built_from_the_wheel_has_the_checkouts_sources(venv, far):
    """The source hash covers exactly what goes in: the wheel's package is the checkout's, file
    for file, so both compute the same hash (the staged libraries aside: the venv has none)."""
    code = ("from parallel_autopilot import config; from parallel_autopilot.containers import image; "
            "import sys; print(image.source_hash(config.load({}, repo=sys.argv[1]), libs=[]))")
    theirs = subprocess.run([str(venv / "python"), "-c", code, str(far)], cwd=far, env=clean_env(venv),
                            capture_output=True, text=True, check=True).stdout.strip()
    from parallel_autopilot import config

    assert theirs == image.source_hash(config.load({}, repo=str(far)), libs=[])


@pytest.fixture(scope="module")
def wheel_image(venv, far):
    """The agent image with both real CLIs, built by the installed wheel (`build --cli all`)."""
    tag = f"parallel-autopilot:wheel-{os.getpid()}"
    BUILT_TEST_IMAGES.add(tag)
    env = clean_env(venv, INVOKE_AUTOPILOT_IMAGE=tag, INVOKE_AUTOPILOT_AGENT_CLI="all")
    try:
        yield tag, env
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


@pytest.mark.docker
def test_build_cli_all_from_the_wheel(wheel_image, far):
    tag, env = wheel_image
    info = json.loads(tool(venv_of(env), "build", "--cli", "all", "--json", cwd=far, env=env).stdout)
    assert info["image"] == tag
    assert set(info["clis"]) == {"codex", "claude"}
    labels = json.loads(subprocess.run(["docker", "image", "inspect", tag, "--format", "{{json .Config.Labels}}"],
                                       capture_output=True, text=True, check=True).stdout)
    assert labels[image.LABEL_VERSION] == parallel_autopilot.__version__


@pytest.mark.docker
def test_the_demo_from_the_wheel_resolves_its_twelve_issues(wheel_image, tmp_path):
    tag, env = wheel_image
    result = json.loads(tool(venv_of(env), "demo", "--dir", str(tmp_path / "demo"), "--json", cwd=tmp_path,
                             env=env, timeout=900).stdout)
    assert [i["status"] for i in result["issues"]] == ["done"] * 12


@pytest.mark.docker
def test_agents_start_and_stop_on_a_new_repository_from_the_wheel(wheel_image, tmp_path):
    tag, env = wheel_image
    bin_dir = venv_of(env)
    repo = tmp_path / "my-project"
    repo.mkdir()
    for args in (["init", "-q", "-b", "main"], ["config", "user.name", "Me"], ["config", "user.email", "me@example.invalid"]):
        subprocess.run(["git", *args], cwd=repo, check=True)
    (repo / "README.md").write_text("mine\n")
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "first"], cwd=repo, check=True)
    for n in range(1, 5):
        tool(bin_dir, "issues.add", "--title", f"note {n}", "--script", f"echo {n} > note-{n}.txt", cwd=repo, env=env)
    try:
        tool(bin_dir, "agents.start", "--n", "2", cwd=repo, env=env, timeout=600)
        deadline = time.monotonic() + 300
        while True:
            issues = json.loads(tool(bin_dir, "issues.list", "--json", cwd=repo, env=env).stdout)
            if all(i["status"] == "done" for i in issues) or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert [i["status"] for i in issues] == ["done"] * 4
        status = json.loads(tool(bin_dir, "agents.status", "--json", cwd=repo, env=env).stdout)
        running = status["agents"] if isinstance(status, dict) else status
        assert {a["id"] for a in running} == {"agent-001", "agent-002"}
        images = {subprocess.run(["docker", "inspect", "--format", "{{.Config.Image}}", a["container"]],
                                 capture_output=True, text=True, check=True).stdout.strip() for a in running}
        assert images == {tag}  # the wheel's image runs them
    finally:
        tool(bin_dir, "agents.stop", cwd=repo, env=env, check=False, timeout=300)
    after = json.loads(tool(bin_dir, "agents.status", "--json", cwd=repo, env=env).stdout)
    assert (after["agents"] if isinstance(after, dict) else after) == []


def venv_of(env: dict) -> Path:
    return Path(env["PATH"].split(os.pathsep, 1)[0])
