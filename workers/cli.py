"""``pacs-hub worker`` (run a Celery worker) and ``pacs-hub process`` (submit and follow a job)."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from pacs_hub.cli_common import DataDir, load_settings, open_database
from pacs_hub.errors import HubError

if TYPE_CHECKING:
    from workers import jobs
    from workers.celery_app import HubCelery

QUEUES = ("cpu", "gpu", "io")  # workers.celery_app.QUEUES, without importing Celery here

console = Console()
FINAL = ("succeeded", "failed", "cancelled")


def worker(
    queues: Annotated[
        str, typer.Option("-Q", "--queues", help=f"Comma list of queues: {', '.join(QUEUES)}")
    ] = ",".join(QUEUES),
    concurrency: Annotated[int, typer.Option(min=1, help="Jobs run at once")] = 1,
    data_dir: DataDir = None,
) -> None:
    """Run a Celery worker for the hub's jobs (a GPU node: ``pacs-hub worker -Q gpu``).

    The broker and result backend are PACS_HUB_BROKER_URL and PACS_HUB_RESULT_BACKEND
    (default: SQLite files in the data folder). Stops on SIGTERM after the running job.
    """
    names = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = sorted(set(names) - set(QUEUES))
    if unknown or not names:
        raise typer.BadParameter(f"queues {unknown or names}: expected some of {list(QUEUES)}")
    from workers.celery_app import make_app

    app = make_app(load_settings(data_dir=data_dir))
    app.worker_main(
        [
            "worker",
            "--queues",
            ",".join(names),
            "--concurrency",
            str(concurrency),
            "--loglevel",
            app.hub_settings.log_level,
            "--without-gossip",
            "--without-mingle",
        ]
    )


def _parameters(text: str) -> dict[str, object]:
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"--parameters: JSON object expected ({exc})") from exc
    if not isinstance(value, dict):
        raise typer.BadParameter(
            "--parameters: a JSON object expected, e.g. '{\"threshold\": 200}'"
        )
    return value


def _follow(app: HubCelery, key: str, timeout: float) -> jobs.Job:
    from workers import jobs

    deadline = time.monotonic() + timeout
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("queued", total=100)
        while True:
            job = jobs.get(app, key)
            assert job is not None
            state = job.state
            bar.update(task, completed=state.percent, description=state.stage or state.state)
            if state.state in FINAL or time.monotonic() > deadline:
                return job
            time.sleep(0.5)


def process(
    series_uid: Annotated[str, typer.Argument(help="Series Instance UID of a stored series")],
    pipeline: Annotated[
        str, typer.Option(help="Comma list: mpr, mip, rotating_mip, surface, render")
    ] = "mpr,mip",
    parameters: Annotated[
        str, typer.Option(help="JSON object of options, e.g. '{\"slice_spacing\": 2.0}'")
    ] = "",
    wait: Annotated[bool, typer.Option(help="Follow the job with a progress bar")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to follow the job")] = 3600.0,
    data_dir: DataDir = None,
) -> None:
    """Post-process a stored series (MPR, MIP, surface, rendering); results are new series.

    Submitting the same series, pipeline and parameters again gives the same job.
    Exit status: 0 succeeded (or submitted with --no-wait), 1 failed or cancelled,
    2 bad usage, 3 still running at --timeout.
    """
    from workers import jobs
    from workers.celery_app import make_app

    settings = load_settings(data_dir=data_dir)
    app = make_app(settings)
    steps = tuple(s.strip() for s in pipeline.split(",") if s.strip())
    try:
        spec = jobs.describe(
            open_database(settings), app, series_uid, steps, _parameters(parameters)
        )
    except HubError as exc:
        console.print(f"[red]{exc.title}[/red]: {exc.message}")
        raise typer.Exit(2) from None
    job, sent = jobs.submit(app, spec, "cli")
    console.print(f"job {job.key} ({'submitted' if sent else 'already ' + job.state.state})")
    if not wait:
        return
    job = _follow(app, job.key, timeout)
    state = job.state
    if state.state == "succeeded":
        series = ", ".join(str(s) for s in state.result.get("series", []))
        console.print(f"succeeded: {state.result.get('instances')} instance(s) in series {series}")
        return
    if state.state in FINAL:
        console.print(f"[red]{state.state}[/red]: {state.error or state.stage}")
        raise typer.Exit(1)
    raise typer.Exit(3)
