"""The `serve` and `apikey` commands (registered on the CLI app by cli.py): parse options,
open the database, and start uvicorn or manage keys. Heavy imports happen inside commands."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import orjson
import typer

from condasync.errors import EXIT_USAGE
from condasync.storage import S3Options

apikey_app = typer.Typer(help="Manage API keys offline (same database as `serve`).")

DirArg = Annotated[Path, typer.Argument(metavar="DIR", help="Folder holding the channels.")]
DbOpt = Annotated[
    str | None,
    typer.Option("--db", help="SQLAlchemy URL (default: sqlite:///DIR/.condasync/condasync.db)."),
]
ROLE_CHOICES = ("owner", "maintainer", "member")


def _fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    print(f"error: {message}", file=sys.stderr)
    return typer.Exit(code)


def _open_db(root: Path, db: str | None):  # type: ignore[no-untyped-def]
    from condasync.serve.db import Database, default_url

    try:
        return Database(db or default_url(root.resolve()))
    except Exception as exc:  # SQLAlchemy raises many kinds; all mean "cannot open it"
        raise _fail(f"cannot open the database: {exc}") from None


def default_proxy_name(url: str) -> str:
    """The last path segment of the URL (the host when there is none), made a valid name."""
    parts = urlsplit(url.rstrip("/"))
    segment = parts.path.rstrip("/").rsplit("/", 1)[-1] or parts.netloc
    name = re.sub(r"[^a-z0-9._-]+", "-", segment.lower()).strip("-._")
    return name[:64]


def serve(
    target: DirArg = Path("."),
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8000,
    db: DbOpt = None,
    proxy: Annotated[
        str | None, typer.Option("--proxy", help="Serve one proxy channel of this upstream URL.")
    ] = None,
    name: Annotated[
        str | None,
        typer.Option("--name", help="Name of the --proxy channel (default: last URL segment)."),
    ] = None,
    ttl: Annotated[
        int, typer.Option("--ttl", help="Seconds a --proxy channel's index stays fresh.")
    ] = 600,
    upstream_timeout: Annotated[
        float, typer.Option("--upstream-timeout", help="Seconds before a silent upstream is 504.")
    ] = 10.0,
    storage: Annotated[
        str | None,
        typer.Option(
            "--storage",
            metavar="s3://BUCKET/PREFIX",
            help="Keep channel files and the proxy cache in S3 (channel <name> under "
            "PREFIX/<name>/); DIR then holds only the default SQLite database and scratch files.",
        ),
    ] = None,
    s3_endpoint: Annotated[
        str | None,
        typer.Option("--s3-endpoint", help="S3-compatible endpoint URL (else AWS_ENDPOINT_URL)."),
    ] = None,
    s3_force_path_style: Annotated[
        bool,
        typer.Option("--s3-force-path-style", help="Path-style S3 URLs (bucket in the path)."),
    ] = False,
    s3_no_lock: Annotated[
        bool,
        typer.Option(
            "--s3-no-lock",
            help="S3 stores without conditional writes: mirror channels sync without the "
            "bucket lock (the database still runs one task per channel at a time).",
        ),
    ] = False,
    access_log: Annotated[
        str | None,
        typer.Option(
            "--access-log", metavar="-|PATH", help="One JSON line per request, to stdout or PATH."
        ),
    ] = None,
    metrics_key_only: Annotated[
        bool,
        typer.Option("--metrics-key-only", help="/metrics needs a key with a server role."),
    ] = False,
    no_metrics: Annotated[
        bool, typer.Option("--no-metrics", help="No /metrics and no metric bookkeeping.")
    ] = False,
) -> None:
    """Serve every channel under DIR (or --storage s3://...) at /channels/<name>, with the API
    at /api (docs: /docs). Replicas share state with --db postgresql://... and --storage."""
    from condasync.serve.db import Channel
    from condasync.serve.paths import is_channel_name

    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _fail(f"cannot create {target}: {exc.strerror}") from None
    if not target.is_dir():
        raise _fail(f"{target} is not a directory")
    if storage is not None and not storage.startswith("s3://"):
        raise _fail("--storage takes an s3://bucket/prefix URL (channels in DIR need no option)")
    if storage is None and (s3_endpoint or s3_force_path_style or s3_no_lock):
        raise _fail("--s3-endpoint, --s3-force-path-style and --s3-no-lock go with --storage")
    options = S3Options(s3_endpoint, s3_force_path_style or None, s3_no_lock)
    store = _open_store(target, storage, options)
    database = _open_db(target, db)
    if proxy is not None:
        parts = urlsplit(proxy)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise _fail("--proxy needs an http:// or https:// URL")
        channel_name = name or default_proxy_name(proxy)
        if not is_channel_name(channel_name):
            raise _fail(f"invalid channel name {channel_name!r}: give --name")
        database.upsert_channel(Channel(channel_name, False, proxy.rstrip("/"), "proxy", ttl))
        print(f"proxy channel {channel_name!r} -> {proxy}", file=sys.stderr)
    elif name is not None:
        raise _fail("--name only goes with --proxy")
    if not database.has_owner():
        key, _ = database.create_key("owner", description="created at first start")
        print(f"Owner API key (shown once, store it now): {key}", flush=True)
    observe = _observe_options(access_log, metrics_key_only, no_metrics)
    _run(target, database, store, host, port, upstream_timeout, observe)


def _open_store(target: Path, storage: str | None, options: S3Options):  # type: ignore[no-untyped-def]
    """The channel store: DIR, or S3 checked with one LIST (bad credentials exit 3 now)."""
    from condasync.errors import CondasyncError
    from condasync.serve.store import S3Channels, open_channels

    try:
        store = open_channels(target, storage, options)
        if isinstance(store, S3Channels):
            store.check()
    except CondasyncError as exc:
        raise _fail(str(exc), exc.exit_code) from None
    return store


def _observe_options(
    access_log: str | None, metrics_key_only: bool, no_metrics: bool
) -> dict[str, object]:
    """App keyword arguments for the access log and metrics (the log file opened now)."""
    from condasync.serve.accesslog import AccessLog

    if metrics_key_only and no_metrics:
        raise _fail("--metrics-key-only and --no-metrics exclude each other")
    log = None
    if access_log is not None:
        try:
            log = AccessLog(access_log)
        except OSError as exc:
            raise _fail(f"cannot open the access log {access_log}: {exc.strerror}") from None
    return {"access_log": log, "metrics_key_only": metrics_key_only, "metrics": not no_metrics}


def _run(
    target: Path,
    database: object,
    store: object,
    host: str,
    port: int,
    upstream_timeout: float,
    observe: dict[str, object] | None = None,
) -> None:
    import uvicorn

    from condasync.serve.app import App
    from condasync.serve.db import Database
    from condasync.serve.server import Server
    from condasync.serve.store import LocalChannels, S3Channels

    assert isinstance(database, Database)
    assert isinstance(store, (LocalChannels, S3Channels))
    server = Server(target, database, upstream_timeout=upstream_timeout, store=store)
    # Tasks a dead replica (or this one's previous life) left pending or running never end.
    database.interrupt_stale_tasks(server.tasks.me)
    server.tasks.start()
    print(f"serving {store.label} at http://{host}:{port}/channels/<name> (API docs: /docs)",
          file=sys.stderr, flush=True)  # fmt: skip
    uvicorn.run(
        App(server, **(observe or {})),  # type: ignore[arg-type]
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=3,
    )


@apikey_app.command("create")
def apikey_create(
    target: DirArg = Path("."),
    role: Annotated[
        str, typer.Option("--role", help="owner, maintainer or member (on --channel if given).")
    ] = "member",
    channel: Annotated[
        str | None, typer.Option("--channel", help="Give the role on this channel only.")
    ] = None,
    description: Annotated[str, typer.Option("--description", help="A note.")] = "",
    db: DbOpt = None,
) -> None:
    """Create a key and print only the key on stdout (KEY=$(condasync apikey create ...))."""
    from condasync.serve.paths import is_channel_name

    if role not in ROLE_CHOICES:
        raise _fail(f"--role must be one of {', '.join(ROLE_CHOICES)}")
    if channel is not None and not is_channel_name(channel):
        raise _fail(f"invalid channel name {channel!r}")
    database = _open_db(target, db)
    if channel is None:
        key, _ = database.create_key(role, description=description)
    else:
        key, _ = database.create_key(None, channel, role, description=description)
    sys.stdout.write(key + "\n")


@apikey_app.command("list")
def apikey_list(
    target: DirArg = Path("."),
    db: DbOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List keys (never the keys themselves: only their first characters)."""
    keys = _open_db(target, db).keys()
    if as_json:
        sys.stdout.write(orjson.dumps([k.to_dict() for k in keys]).decode() + "\n")
        return
    for k in keys:
        roles = ",".join(f"{c}:{r}" for c, r in sorted(k.channels.items())) or "-"
        state = "revoked" if k.revoked else "active"
        print(f"{k.id}\t{k.hint}…\t{k.role or '-'}\t{roles}\t{state}\t{k.description}")


@apikey_app.command("revoke")
def apikey_revoke(
    args: Annotated[
        list[str], typer.Argument(metavar="[DIR] KEY", help="Key id, key, or its first characters.")
    ],
    db: DbOpt = None,
) -> None:
    """Revoke a key by id, by the key itself, or by its first characters."""
    if len(args) == 1:
        target, ident = Path("."), args[0]
    elif len(args) == 2:
        first, second = args
        target, ident = (
            (Path(second), first)
            if Path(second).is_dir() and not Path(first).is_dir()
            else (Path(first), second)
        )
    else:
        raise _fail("give [DIR] KEY")
    count = _open_db(target, db).revoke_key(ident)
    if count == 0:
        raise _fail(f"no key matches {ident!r}")
    if count < 0:
        raise _fail(f"{-count} keys match {ident!r}; give its id")
    print(f"revoked {count} key(s)", file=sys.stderr)
