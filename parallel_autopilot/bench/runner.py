"""Runs the chosen scenarios in order and writes the report.

Before the scenarios, the agent image is made ready once (``image.ensure_image``)
under a tag of the run's own (:func:`run_image`, removed at the end), so no
scenario measures a build and no other user of the daemon can swap it mid-run. A scenario that raises is recorded as failed
with its one-line reason and the run goes on; one that cannot run here (no
Docker, no image: ``NEEDS_FLEET`` and :func:`~.sandbox.fleet_problem`) is recorded as skipped with the reason. Every container a run
creates carries its run id and is removed at the end, whatever happened.
"""

from __future__ import annotations

import datetime as dt
import importlib
import shutil
import tempfile
import time
import traceback
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable

from ..config import Settings
from ..errors import AutopilotError, InvalidInput, one_line
from . import SCENARIOS, report, stats
from .context import Context
from .progress import Display
from .sandbox import LABEL_BENCH, fleet_problem, remove_labelled

#: Rounds per figure unless ``repeats`` says otherwise.
DEFAULT_REPEATS = {"quick": 2, "full": 3}


def parse_scenarios(text: str | Iterable[str] | None) -> list[str]:
    """``"queue,startup"`` (or a list) as scenario names in run order; InvalidInput for unknown ones."""
    if text is None or text == "" or text == "all":
        return list(SCENARIOS)
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or not names:
        raise InvalidInput(f"unknown scenario {', '.join(unknown) or repr(text)}: choose from {','.join(SCENARIOS)}")
    return [n for n in SCENARIOS if n in names]


def parse_repeats(value: Any) -> int | None:
    """``--repeat`` as a positive integer (None: the default for the run's size)."""
    if value is None or value == "":
        return None
    try:
        repeats = int(str(value).strip())
    except ValueError:
        repeats = 0
    if not 1 <= repeats <= 50:
        raise InvalidInput(f"--repeat {value!r} is not a count of rounds: give 1 to 50")
    return repeats


def results_dir(settings: Settings) -> Path:
    """Where reports go by default: ``bench/results`` of the repository."""
    return settings.repo / "bench" / "results"


def run_image(settings: Settings, run_id: str) -> str:
    """The image tag of one run: ``<settings.image repository>:bench-<run id>``.

    Same Dockerfile and sources as ``settings.image`` (the build cache makes it
    the same layers), but a tag of its own: on a daemon shared with others, a
    concurrent rebuild or prune of the usual tag cannot pull it away mid-run.
    """
    name = str(settings.image)
    repository = name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name
    return f"{repository}:bench-{run_id}"


def _prepare_image(settings: Settings, ctx: Context, display: Display) -> float:
    start = ctx.clock()
    try:
        from ..containers import daemon, image

        daemon.client()
        ctx.image = image.ensure_image(settings.replace(image=run_image(settings, ctx.run_id)),
                                       progress=display.step)
        ctx.image_problem = None
    except AutopilotError as err:
        ctx.image, ctx.image_problem = None, str(err)
    except ImportError as err:
        ctx.image, ctx.image_problem = None, f"the image module is not available ({err})"
    return ctx.clock() - start


def _drop_image(tag: str | None) -> None:
    """Remove the run's own tag (the image stays while another tag or container uses it)."""
    if not tag:
        return
    try:
        from ..containers import daemon

        daemon.client().images.remove(tag, noprune=False)
    except Exception:  # noqa: BLE001 - housekeeping must not hide the report
        pass


def load_scenario(name: str) -> ModuleType:
    """The module of scenario ``name`` (``bench/<name>.py``: ``TITLE``, ``run(ctx)``, maybe ``NEEDS_FLEET``)."""
    return importlib.import_module(f"{__package__}.{name}")


def _failure_line(err: BaseException) -> str:
    text = one_line(err, limit=1000)
    return text if isinstance(err, AutopilotError) else f"{err.__class__.__name__}: {text}"


def run(settings: Settings, scenarios: Iterable[str] | str | None = None, *, quick: bool = False,
        repeats: int | None = None, out_dir: Path | None = None, display: Display | None = None,
        clock: Callable[[], float] = time.perf_counter, wall: Callable[[], float] = time.time,
        prepare_image: bool = True,
        load: Callable[[str], Any] = load_scenario) -> tuple[dict[str, Any], dict[str, Path]]:
    """Run ``scenarios`` (all by default); write and return the report and its file paths.

    ``load`` gives a scenario's module by name (default :func:`load_scenario`).
    """
    names = parse_scenarios(scenarios)
    display = display or Display()
    repeats = repeats or DEFAULT_REPEATS["quick" if quick else "full"]
    run_id = uuid.uuid4().hex[:8]
    started = wall()
    stamp = dt.datetime.fromtimestamp(started, dt.timezone.utc)
    workdir = Path(tempfile.mkdtemp(prefix=f"pa-bench-{run_id}-"))
    ctx = Context(settings=settings, workdir=workdir, run_id=run_id, quick=quick, repeats=repeats,
                  progress=display.step, clock=clock, wall=wall)
    results = []
    setup: dict[str, Any] = {}
    t0 = clock()
    try:
        if prepare_image:
            display.note("preparing the agent image (not measured)")
            setup["image_seconds"] = round(_prepare_image(settings, ctx, display), 2)
        setup.update(image=ctx.image, image_problem=ctx.image_problem)
        if ctx.image_problem:
            display.note(f"no agent image: {ctx.image_problem}")
        for index, name in enumerate(names, start=1):
            module = load(name)
            display.begin(name, index, len(names))
            begun = clock()
            problem = fleet_problem(ctx) if getattr(module, "NEEDS_FLEET", False) else None
            try:
                result = (stats.failed(name, module.TITLE, problem, status="skipped") if problem
                          else module.run(ctx))
            except Exception as err:  # noqa: BLE001 - one scenario's failure must not lose the others
                result = stats.failed(name, module.TITLE, _failure_line(err),
                                      details={"traceback": traceback.format_exc()})
            result["seconds"] = round(clock() - begun, 2)
            display.end(name, result["status"], result["seconds"], result.get("reason"))
            results.append(result)
    finally:
        display.close()
        remove_labelled(f"{LABEL_BENCH}={run_id}")
        _drop_image(ctx.image)
        shutil.rmtree(workdir, ignore_errors=True)
    data = {
        "version": 1,
        "run_id": run_id,
        "stamp": stamp.strftime("%Y%m%dT%H%M%SZ") + ("-quick" if quick else ""),
        "started_at": stamp.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "seconds": round(clock() - t0, 2),
        "quick": quick,
        "repeats": repeats,
        "scenarios_asked": names,
        "machine": report.machine(),
        "setup": setup,
        "settings": {k: getattr(settings, k) for k in ("image", "lease_seconds", "poll_seconds",
                                                         "stop_grace_seconds", "health_interval_seconds")},
        "scenarios": results,
    }
    paths = report.write(data, out_dir or results_dir(settings))
    data["files"] = {k: str(v) for k, v in paths.items()}
    return data, paths


def failures(data: dict[str, Any]) -> list[str]:
    """``name: reason`` of every scenario that failed (skipped ones are not failures)."""
    return [f"{sc['name']}: {sc['reason']}" for sc in data["scenarios"] if sc["status"] == "failed"]


__all__ = ["run", "run_image", "parse_scenarios", "parse_repeats", "results_dir", "failures", "DEFAULT_REPEATS"]
