"""The `serve` and `apikey` commands (registered on the CLI app by cli.py): parse options,
open the database, and start uvicorn or manage keys. Heavy imports happen inside commands."""

from __future__ import annotations

import errno
import re
import socket
import sys
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import orjson
import typer

from condasync.errors import EXIT_USAGE
from condasync.storage import S3Options

apikey_app = typer.Typer(
    help="Manage API keys offline (same database as `serve`).", rich_markup_mode=None
)

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
        typer.Option(
            "--name",
            help="Name of the --proxy channel (default: last URL segment), or of DIR when DIR"
            " is itself one channel tree (default: its folder name).",
        ),
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
    cache_max_size: Annotated[
        str | None,
        typer.Option(
            "--cache-max-size",
            metavar="SIZE",
            help="Cap the bytes of cached proxy packages across all proxy channels (700K, 500G, "
            "20GiB; default unlimited): least recently requested packages are evicted first.",
        ),
    ] = None,
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
    max_size = _cache_size(cache_max_size)
    options = S3Options(s3_endpoint, s3_force_path_style or None, s3_no_lock)
    single = _single_tree_name(target, name) if storage is None and proxy is None else None
    store = _open_store(target, storage, options, single)
    sock = _bind(host, port)  # before anything says "serving": a taken port is one error line
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
    elif name is not None and single is None:
        raise _fail("--name goes with --proxy, or with a DIR that is one channel tree")
    if not database.has_owner():
        key, _ = database.create_key("owner", description="created at first start")
        print(f"Owner API key (shown once, store it now): {key}", flush=True)
    observe = _observe_options(access_log, metrics_key_only, no_metrics)
    _run(target, database, store, sock, upstream_timeout, single, max_size, observe)


def _cache_size(text: str | None) -> int | None:
    from condasync.serve.cachelimit import parse_size

    if text is None:
        return None
    try:
        return parse_size(text)
    except ValueError as exc:
        raise _fail(f"--cache-max-size: {exc}") from None


def _channel_exists(target: Path, database: object, name: str) -> bool:
    """A channel row in the database, or a tree DIR/<name> (or DIR itself, served as one)."""
    from condasync.serve.db import Database
    from condasync.serve.store import LocalChannels

    assert isinstance(database, Database)
    if database.channel(name) is not None:
        return True
    single = _single_tree_name(target, None)
    return name == single or name in LocalChannels(target, single).names()


def _single_tree_name(target: Path, name: str | None) -> str | None:
    """When DIR is itself one channel tree (it has <subdir>/repodata.json), the name it is
    served under: --name, else its folder's name."""
    from condasync.serve.paths import is_channel_name
    from condasync.serve.store import is_channel_tree

    if not is_channel_tree(target):
        return None
    chosen = name or default_proxy_name(target.resolve().name) or "channel"
    if not is_channel_name(chosen):
        raise _fail(f"invalid channel name {chosen!r}: give --name")
    return chosen


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise _fail(f"cannot listen on {host}:{port}: the port is already in use") from None
        raise _fail(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def _open_store(target: Path, storage: str | None, options: S3Options, single: str | None):  # type: ignore[no-untyped-def]
    """The channel store: DIR, or S3 checked with one LIST (bad credentials exit 3 now)."""
    from condasync.errors import CondasyncError
    from condasync.serve.store import S3Channels, open_channels

    try:
        store = open_channels(target, storage, options, single)
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
    sock: socket.socket,
    upstream_timeout: float,
    single: str | None,
    cache_max_size: int | None = None,
    observe: dict[str, object] | None = None,
) -> None:
    import uvicorn

    from condasync.serve.app import App
    from condasync.serve.db import Database
    from condasync.serve.server import Server
    from condasync.serve.store import LocalChannels, S3Channels

    assert isinstance(database, Database)
    assert isinstance(store, (LocalChannels, S3Channels))
    server = Server(target, database, upstream_timeout, store, cache_max_size)
    # Tasks a dead replica (or this one's previous life) left pending or running never end.
    database.interrupt_stale_tasks(server.tasks.me)
    server.tasks.start()
    server.cache.start()
    host, port = sock.getsockname()[:2]
    base = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    if single is not None:
        line = f"serving {store.label} as channel {single!r}: point clients at {base}/channels/"
        line += f"{single} (API docs: {base}/docs)"
    else:
        line = f"serving {store.label} at {base}/channels/<name> (API docs: {base}/docs)"
    print(line, file=sys.stderr, flush=True)
    config = uvicorn.Config(
        App(server, **(observe or {})),  # type: ignore[arg-type]
        log_level="warning",
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=3,
    )
    uvicorn.Server(config).run(sockets=[sock])


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
    if channel is not None and not _channel_exists(target, database, channel):
        raise _fail(
            f"no channel {channel!r} in {target} (create it first with POST /api/channels,"
            " or mirror a tree into DIR/<name>)"
        )
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
