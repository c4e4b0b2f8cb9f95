"""``tailor publish / serve / redis``: the champion to Redis, and the HTTP service.

``publish`` and ``serve`` start the embedded Redis first when ``REDIS_URL`` is not set. Errors a
user can fix (unknown model URI, missing data, Redis not startable, a publish already running)
print one red line and exit with code 2.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from tailor_cli.common import console, load_settings

if TYPE_CHECKING:
    import subprocess

    from features.mapping import EventMapping
    from training.publish import PublishSummary

PANEL = "Serving"
EXIT_USAGE = 2

redis_app = typer.Typer(no_args_is_help=True, help="Run the embedded Redis (unless REDIS_URL points elsewhere).")
events_app = typer.Typer(no_args_is_help=True, help="The events the service stored (POST /v1/events).")


def _fail(message: str) -> NoReturn:
    console.print(f"error: {message}", style="bold red", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_USAGE)


@contextmanager
def _user_errors() -> Iterator[None]:
    """One clear line and exit 2 for errors caused by input or environment, not by a bug."""
    import redis

    from features.errors import TailorDataError
    from service.redis_server import RedisServerError
    from training.event_stream import EventExportError
    from training.models.base import ModelError
    from training.publish import PublishError
    from training.tracking import TrackingError

    try:
        yield
    except (
        TailorDataError, ModelError, TrackingError, PublishError, RedisServerError, EventExportError, FileNotFoundError,
    ) as exc:  # fmt: skip
        _fail(str(exc))
    except redis.ConnectionError as exc:
        _fail(f"cannot reach Redis: {exc}")
    except redis.RedisError as exc:  # a server error reply (e.g. WRONGTYPE) or a timeout
        _fail(f"Redis: {exc}")


def _mapping(preset: str | None, mapping_file: Path | None) -> EventMapping | None:
    from features.mapping import get_preset, load_mapping

    if preset and mapping_file:
        _fail("give either --preset or --mapping, not both")
    if mapping_file is not None:
        return load_mapping(mapping_file)
    return get_preset(preset) if preset else None


# --- publish ---------------------------------------------------------------------------------------------
def publish(
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            "-d",
            help="Events file, or a store folder with events.parquet (+ catalogue, users); "
            "default: the data the model was trained on",
        ),
    ] = None,
    model_uri: Annotated[
        str | None,
        typer.Option("--model-uri", "-m", help="MLflow model URI (default models:/<TAILOR_MODEL_NAME>@champion)"),
    ] = None,
    catalogue: Annotated[
        Path | None, typer.Option("--catalogue", help="Catalogue file (default: the store folder's catalogue.parquet)")
    ] = None,
    users: Annotated[
        Path | None,
        typer.Option("--users", help="Users file with segments (default: the store folder's users.parquet)"),
    ] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="Built-in column mapping of the events")] = None,
    mapping: Annotated[Path | None, typer.Option("--mapping", help="Column mapping file (TOML/JSON)")] = None,
    top_n: Annotated[
        int | None, typer.Option("--top-n", min=1, max=1000, help="Items stored per user and per item (default 100)")
    ] = None,
    fallback_days: Annotated[
        float, typer.Option("--fallback-days", min=0.01, help="Window of the popular lists, in days")
    ] = 30.0,
    batch_users: Annotated[int, typer.Option("--batch-users", min=1, help="Users scored per batch")] = 2048,
    exclude_event_types: Annotated[
        str,
        typer.Option(
            "--exclude-event-types",
            help="Comma-separated event types whose items are excluded from a user's recommendations",
        ),
    ] = "purchase",
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar")] = True,
) -> None:
    """Write a registered model's recommendations to Redis and make them the version the service serves."""
    from training.publish import publish_from_registry
    from training.tracking import quiet_mlflow

    settings = load_settings()
    uri = model_uri or f"models:/{settings.model_name}@champion"
    with _user_errors(), quiet_mlflow():
        summary = publish_from_registry(
            uri, data, settings, mapping=_mapping(preset, mapping), catalogue_path=catalogue, users_path=users,
            top_n=top_n, fallback_days=fallback_days, batch_users=batch_users, progress=progress,
            exclude_event_types=tuple(t.strip() for t in exclude_event_types.split(",") if t.strip()),
        )  # fmt: skip
    _print_summary(uri, summary)


def _print_summary(model_uri: str, summary: PublishSummary) -> None:
    from rich.table import Table

    table = Table(title=f"published {model_uri} as version {summary.version}", title_justify="left")
    for column in ("users", "items", "keys", "MB", "seconds", "users/s", "users/s writing"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{summary.users:,}", f"{summary.items:,}", f"{summary.keys:,}", f"{summary.bytes / 1e6:,.1f}",
        f"{summary.seconds:,.2f}", f"{summary.users_per_s:,.0f}", f"{summary.users_written_per_s:,.0f}",
    )  # fmt: skip
    console.print(table)
    if summary.aof_rewrite:
        console.print(f"Redis append-only file rewrite after the switch: {summary.aof_rewrite}")


# --- serve ---------------------------------------------------------------------------------------------------
def serve(
    host: Annotated[str | None, typer.Option("--host", help="Bind address (default TAILOR_HOST)")] = None,
    port: Annotated[int | None, typer.Option("--port", "-p", help="Port (default TAILOR_PORT)")] = None,
    workers: Annotated[int | None, typer.Option("--workers", "-w", min=1, help="Worker processes")] = None,
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="Log every request")] = False,
    background: Annotated[
        bool,
        typer.Option(
            "--background",
            help="Start detached (log and pid file in the home folder), wait until /ready answers, and return",
        ),
    ] = False,
) -> None:
    """Run the HTTP service with uvicorn (production settings: no reload, access log off by default)."""
    import uvicorn

    from service.redis_server import ensure_redis

    settings = load_settings()
    with _user_errors():
        url = ensure_redis(settings)
    # Workers build their own Settings from the environment: hand them the Redis actually in use.
    os.environ["REDIS_URL"] = url
    console.print(f"Redis: {url}", highlight=False)
    bind_host, bind_port = host or settings.host, port or settings.port
    if background:
        _serve_detached(settings.home, bind_host, bind_port, workers or settings.workers)
        return
    uvicorn.run(
        "service.asgi:create_app",
        factory=True,
        host=bind_host,
        port=bind_port,
        workers=workers or settings.workers,
        access_log=access_log,
        reload=False,
        proxy_headers=True,
        log_level="info",
    )


def _serve_detached(home: Path, host: str, port: int, workers: int) -> None:
    """Start ``tailor serve`` as a detached process and wait (bounded) until it is ready."""
    import subprocess
    import sys

    home.mkdir(parents=True, exist_ok=True)
    pidfile, logfile = home / "serve.pid", home / "serve.log"
    _stop_service(pidfile)
    command = [sys.executable, "-m", "tailor_cli", "serve", "--host", host, "--port", str(port), "-w", str(workers)]
    with logfile.open("ab") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    pidfile.write_text(str(proc.pid))
    ready_url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/ready"
    if not _wait_ready(ready_url, proc, timeout_s=60.0):
        _fail(f"the service did not become ready at {ready_url}; see {logfile}")
    console.print(f"serving on http://{host}:{port} (pid {proc.pid}, log {logfile}); stop with `tailor stop`")


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Poll ``url`` until it answers 200, the process dies, or ``timeout_s`` passes."""
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)  # a CLI wait for a child process, not a test
    return False


def _stop_service(pidfile: Path) -> bool:
    """Stop a service started with ``--background`` (SIGTERM to its process group)."""
    import signal

    if not pidfile.exists():
        return False
    pid = int(pidfile.read_text().strip() or 0)
    pidfile.unlink()
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def stop() -> None:
    """Stop a service started with `tailor serve --background`, and the embedded Redis."""
    from service.redis_server import stop_redis

    settings = load_settings()
    stopped = _stop_service(settings.home / "serve.pid")
    console.print("service stopped" if stopped else "no background service was running")
    if not settings.redis_url:
        with _user_errors():
            console.print("Redis stopped" if stop_redis(settings) else "Redis was not running")


# --- redis -----------------------------------------------------------------------------------------------------
@redis_app.command("start")
def redis_start() -> None:
    """Start the embedded Redis (no-op if it runs, or if REDIS_URL is set)."""
    from service.redis_server import ensure_redis

    with _user_errors():
        url = ensure_redis(load_settings())
    console.print(f"Redis running at {url}", highlight=False)


@redis_app.command("stop")
def redis_stop() -> None:
    """Stop the embedded Redis (its data stays in <home>/redis and comes back on start)."""
    from service.redis_server import stop_redis

    settings = load_settings()
    if settings.redis_url:
        _fail("REDIS_URL is set: that Redis is not Tailor's to stop")
    with _user_errors():
        stopped = stop_redis(settings)
    console.print("Redis stopped" if stopped else "Redis was not running")


@redis_app.command("status")
def redis_status() -> None:
    """Show which Redis is in use, whether it answers, and the published version. Exit 1 if it is down."""
    from service.redis_server import redis_status as status_of

    status = status_of(load_settings())
    kind = "embedded" if status.embedded else "external (REDIS_URL)"
    state = f"running (pid {status.pid})" if status.running and status.pid else "running" if status.running else "down"
    console.print(f"{kind} Redis at {status.url}: {state}", highlight=False)
    if status.directory is not None:
        console.print(f"data folder: {status.directory}", highlight=False)
    if not status.running:
        raise typer.Exit(1)
    _print_active(status.url)


def _print_active(url: str) -> None:
    import redis

    from training.publish import active_version

    client = redis.Redis.from_url(url)
    try:
        active = active_version(client)
    finally:
        client.close()
    if active is None:
        console.print("nothing published yet: run `tailor publish`")
        return
    console.print(
        f"active version {active.version}: {active.model_name} v{active.model_version} (run {active.run_id}), "
        f"{active.users:,} users, {active.items:,} items, published {active.generated_at:%Y-%m-%d %H:%M:%S} UTC",
        highlight=False,
    )


# --- events --------------------------------------------------------------------------------------------------
@events_app.command("export")
def events_export(
    out: Annotated[Path, typer.Argument(help="Parquet file to write (the native event contract)")],
    after: Annotated[
        str | None,
        typer.Option("--after", help="Only entries after this stream id: the last stream_id of the previous export"),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists")] = False,
) -> None:
    """Write the events stored by the service (the stream tailor:events) to a Parquet file for training."""
    import redis

    from service.redis_server import ensure_redis
    from training.event_stream import export_events

    with _user_errors():
        client = redis.Redis.from_url(ensure_redis(load_settings()))
        try:
            summary = export_events(client, out, after=after, overwrite=overwrite)
        finally:
            client.close()
    if summary.gap:
        console.print(f"warning: {summary.gap}", style="yellow", markup=False, highlight=False, soft_wrap=True)
    if not summary.events:
        console.print(f"no events{f' after {after}' if after else ''}: wrote an empty {out}", highlight=False)
        return
    span = f"{summary.start:%Y-%m-%d %H:%M:%S} to {summary.end:%Y-%m-%d %H:%M:%S} UTC"
    console.print(
        f"wrote {summary.events:,} event{'s' if summary.events != 1 else ''} to {out} "
        f"({span}, stream ids {summary.first_id} to {summary.last_id})\n"
        f"next time: tailor events export NEW.parquet --after {summary.last_id}",
        highlight=False,
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    """Add the serving commands to the root app."""
    app.command(name="publish", rich_help_panel=PANEL)(publish)
    app.command(name="serve", rich_help_panel=PANEL)(serve)
    app.command(name="stop", rich_help_panel=PANEL)(stop)
    app.add_typer(redis_app, name="redis", rich_help_panel=PANEL)
    app.add_typer(events_app, name="events", rich_help_panel=PANEL)
