"""Shared fixtures: upstream channels (real and generated), HTTP servers, the CLI, a real client."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zstandard

from tests.realservers import postgres_server, postgres_url, s3_bucket, s3_server  # noqa: F401
from tests.servers import ChannelServer, FaultServer

REPO_ROOT = Path(__file__).resolve().parent.parent
REAL_CHANNEL = REPO_ROOT / "tests" / "data" / "real-channel"
RATTLER_CLIENT = REPO_ROOT / "tests" / "rattler_client.py"
REAL_SUBDIRS = ("linux-64", "noarch", "osx-64")
PACKAGE_KEYS = ("packages", "packages.conda")
STATE_DIR = ".condasync"


# --- running the CLI --------------------------------------------------------------------------


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    # no proxy settings from the caller's environment: every server here is on 127.0.0.1
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("FORCE_COLOR", None)
    env["NO_COLOR"] = "1"
    env["COLUMNS"] = "200"
    if extra:
        env.update(extra)
    return env


@dataclass(repr=False)
class CliResult:
    returncode: int
    stdout: str
    stderr: str
    args: tuple[str, ...] = ()

    def __iter__(self) -> Iterator[Any]:
        return iter((self.returncode, self.stdout, self.stderr))

    def json(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.stdout)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"--json output is not one JSON object: {exc}\n{self}") from None
        assert isinstance(doc, dict), doc
        return doc

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def __str__(self) -> str:
        return (
            f"condasync {' '.join(self.args)}\n exit={self.returncode}\n"
            f"--- stdout ---\n{self.stdout[-4000:]}\n--- stderr ---\n{self.stderr[-4000:]}"
        )

    __repr__ = __str__


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "condasync", *map(str, args)]


def run_cli_process(
    *args: Any, timeout: float = 60, env: dict[str, str] | None = None
) -> CliResult:
    str_args = tuple(str(a) for a in args)
    try:
        proc = subprocess.run(
            cli_command(*str_args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=cli_env(env),
            stdin=subprocess.DEVNULL,
            cwd=REPO_ROOT,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        raise AssertionError(
            f"condasync {' '.join(str_args)} did not finish in {timeout}s\n{out}\n{err}"
        ) from None
    return CliResult(proc.returncode, proc.stdout, proc.stderr, str_args)


@pytest.fixture
def run_cli() -> Callable[..., CliResult]:
    """run_cli(*args, timeout=60) -> CliResult(returncode, stdout, stderr); unpacks as a tuple."""
    return run_cli_process


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class BackgroundCli:
    """A CLI run in the background (for lock, kill -9 and SIGINT tests)."""

    def __init__(
        self, args: tuple[str, ...], workdir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.args = args
        self._out = open(workdir / f"bg-{time.monotonic_ns()}.out", "w+")  # noqa: SIM115
        self._err = open(workdir / f"bg-{time.monotonic_ns()}.err", "w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cli_command(*args),
            stdout=self._out,
            stderr=self._err,
            stdin=subprocess.DEVNULL,
            env=cli_env(env),
            cwd=REPO_ROOT,
            # A suite started as a background job (`cmd &` without job control) passes SIGINT
            # on as ignored; the Ctrl-C tests need the default disposition in the child.
            preexec_fn=_default_sigint,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill9(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def wait(self, timeout: float = 60) -> CliResult:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise AssertionError(f"background condasync did not exit in {timeout}s") from None
        self._out.seek(0)
        self._err.seek(0)
        result = CliResult(code, self._out.read(), self._err.read(), self.args)
        self._out.close()
        self._err.close()
        return result

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.kill9()
        for f in (self._out, self._err):
            if not f.closed:
                f.close()


@pytest.fixture
def start_cli(tmp_path: Path) -> Iterator[Callable[..., BackgroundCli]]:
    """start_cli(*args) -> BackgroundCli; every one still running at teardown gets SIGKILL."""
    started: list[BackgroundCli] = []
    logs = tmp_path / "bg-logs"
    logs.mkdir(exist_ok=True)

    def start(*args: Any, env: dict[str, str] | None = None) -> BackgroundCli:
        bg = BackgroundCli(tuple(str(a) for a in args), logs, env)
        started.append(bg)
        return bg

    yield start
    for bg in started:
        bg.cleanup()


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 20,
    interval: float = 0.02,
    what: str = "condition",
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# --- channels ---------------------------------------------------------------------------------


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def md5_of(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def split_filename(filename: str) -> tuple[str, str, str]:
    for ext in (".conda", ".tar.bz2"):
        if filename.endswith(ext):
            name, version, build = filename[: -len(ext)].rsplit("-", 2)
            return name, version, build
    raise ValueError(filename)


class Channel:
    """A writable upstream channel on disk: repodata documents plus package files.

    Edit `docs[subdir]` (the parsed repodata.json) or use the helpers, then `write()`.
    Package files need not be real conda archives: any bytes with a matching record do.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.docs: dict[str, dict[str, Any]] = {}
        for sub in sorted(p for p in self.root.iterdir() if (p / "repodata.json").is_file()):
            self.docs[sub.name] = json.loads((sub / "repodata.json").read_text())

    def doc(self, subdir: str) -> dict[str, Any]:
        if subdir not in self.docs:
            self.docs[subdir] = {
                "info": {"subdir": subdir},
                "packages": {},
                "packages.conda": {},
                "removed": [],
                "repodata_version": 1,
            }
        return self.docs[subdir]

    @staticmethod
    def section(filename: str) -> str:
        return "packages.conda" if filename.endswith(".conda") else "packages"

    def records(self, subdir: str) -> dict[str, dict[str, Any]]:
        """All records of a subdir (both sections), filename -> record."""
        doc = self.docs[subdir]
        return {**doc.get("packages", {}), **doc.get("packages.conda", {})}

    def record(self, subdir: str, filename: str) -> dict[str, Any]:
        return self.doc(subdir)[self.section(filename)][filename]

    def add(
        self,
        subdir: str,
        filename: str,
        data: bytes | None = None,
        *,
        write_file: bool = True,
        **fields: Any,
    ) -> dict[str, Any]:
        """Add a package file and a matching record; `fields` override or extend the record."""
        if data is None:
            data = f"package {subdir}/{filename}\n".encode() * 8
        name, version, build = split_filename(filename)
        record: dict[str, Any] = {
            "build": build,
            "build_number": int(build.rsplit("_", 1)[-1])
            if build.rsplit("_", 1)[-1].isdigit()
            else 0,
            "depends": [],
            "license": "BSD-3-Clause",
            "md5": md5_of(data),
            "name": name,
            "sha256": sha256_of(data),
            "size": len(data),
            "subdir": subdir,
            "timestamp": 1700000000000,
            "version": version,
        }
        record.update(fields)
        record = {k: v for k, v in record.items() if v is not ...}  # `sha256=...` drops a key
        if write_file:
            (self.root / subdir).mkdir(parents=True, exist_ok=True)
            (self.root / subdir / filename).write_bytes(data)
        self.doc(subdir).setdefault(self.section(filename), {})[filename] = record
        return record

    def reupload(self, subdir: str, filename: str, data: bytes) -> dict[str, Any]:
        """Replace a package's bytes under the same name and update its record's hashes and size."""
        (self.root / subdir / filename).write_bytes(data)
        record = self.record(subdir, filename)
        record.update(size=len(data), md5=md5_of(data))
        if "sha256" in record:
            record["sha256"] = sha256_of(data)
        return record

    def remove(self, subdir: str, filename: str, delete_file: bool = True) -> None:
        del self.doc(subdir)[self.section(filename)][filename]
        if delete_file:
            (self.root / subdir / filename).unlink(missing_ok=True)

    def write(self, subdir: str | None = None, zst: bool = False) -> None:
        for sub in [subdir] if subdir else list(self.docs):
            path = self.root / sub / "repodata.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            data = json.dumps(self.docs[sub], indent=2, sort_keys=True).encode()
            path.write_bytes(data)
            zst_path = path.with_name("repodata.json.zst")
            if zst:
                zst_path.write_bytes(zstandard.ZstdCompressor().compress(data))
            elif zst_path.exists():
                zst_path.unlink()

    @property
    def url(self) -> str:
        return self.root.as_uri()


def copy_channel(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for dirpath, _dirnames, filenames in os.walk(dst):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)
    return dst


@pytest.fixture
def real_channel(tmp_path: Path) -> Channel:
    """A writable copy of tests/data/real-channel (19 real packages in linux-64, osx-64, noarch)."""
    return Channel(copy_channel(REAL_CHANNEL, tmp_path / "upstream"))


@pytest.fixture
def gen_channel(tmp_path: Path) -> Channel:
    """An empty generated channel in tmp_path/'gen-upstream'; fill it with .add() and .write()."""
    return Channel(tmp_path / "gen-upstream")


@pytest.fixture
def channel_server(real_channel: Channel) -> Iterator[ChannelServer]:
    with ChannelServer(real_channel.root) as server:
        yield server


@pytest.fixture
def fault_server(real_channel: Channel) -> Iterator[FaultServer]:
    with FaultServer(real_channel.root) as server:
        yield server


@pytest.fixture
def serve() -> Iterator[Callable[..., ChannelServer]]:
    """serve(root, **kwargs) -> a started ChannelServer, stopped at teardown."""
    servers: list[ChannelServer] = []

    def start(root: Path, cls: type[ChannelServer] = ChannelServer, **kwargs: Any) -> ChannelServer:
        server = cls(root, **kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def mirror_dir(tmp_path: Path) -> Path:
    """The DIR argument: a path that does not exist yet."""
    return tmp_path / "mirror"


# --- checking a mirror tree -------------------------------------------------------------------


def iter_tree(root: Path) -> Iterator[Path]:
    """Every regular file under root, except the state folder."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not (dirpath == str(root) and d == STATE_DIR))
        for name in sorted(filenames):
            yield Path(dirpath) / name


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in iter_tree(root)}


def tree_stat(root: Path) -> dict[str, tuple[int, int, int]]:
    """relpath -> (size, mtime_ns, inode) for every file outside the state folder."""
    out = {}
    for p in iter_tree(root):
        st = p.stat()
        out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def published_subdirs(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "repodata.json").is_file())


def load_index(root: Path, subdir: str) -> dict[str, Any]:
    return json.loads((root / subdir / "repodata.json").read_bytes())


def index_records(root: Path, subdir: str) -> dict[str, dict[str, Any]]:
    doc = load_index(root, subdir)
    return {**doc.get("packages", {}), **doc.get("packages.conda", {})}


def consistency_problems(root: Path) -> list[str]:
    """What a reader of the tree would trip on: missing/wrong files listed in an index, a .zst
    that is not the same bytes as its .json, or an index that is not JSON."""
    problems: list[str] = []
    for subdir in published_subdirs(root):
        raw = (root / subdir / "repodata.json").read_bytes()
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            problems.append(f"{subdir}/repodata.json is not JSON: {exc}")
            continue
        zst = root / subdir / "repodata.json.zst"
        if zst.exists():
            try:
                unpacked = zstandard.ZstdDecompressor().decompressobj().decompress(zst.read_bytes())
            except zstandard.ZstdError as exc:
                problems.append(f"{subdir}/repodata.json.zst is not zstd: {exc}")
            else:
                if unpacked != raw:
                    problems.append(f"{subdir}/repodata.json.zst differs from repodata.json")
        for key in PACKAGE_KEYS:
            for filename, record in (doc.get(key) or {}).items():
                path = root / subdir / filename
                if not path.is_file():
                    problems.append(f"{subdir}/{filename} is indexed but missing")
                    continue
                data = path.read_bytes()
                if len(data) != record.get("size"):
                    problems.append(
                        f"{subdir}/{filename}: size {len(data)} != {record.get('size')}"
                    )
                if record.get("sha256") and sha256_of(data) != record["sha256"]:
                    problems.append(f"{subdir}/{filename}: sha256 mismatch")
                if record.get("md5") and md5_of(data) != record["md5"]:
                    problems.append(f"{subdir}/{filename}: md5 mismatch")
    return problems


def assert_consistent(root: Path) -> None:
    problems = consistency_problems(root)
    assert not problems, "inconsistent mirror tree:\n" + "\n".join(problems)


# --- a real conda client ----------------------------------------------------------------------


@dataclass
class RattlerResult:
    returncode: int
    records: list[dict[str, Any]]
    stdout: str
    stderr: str
    prefix: Path

    def installed(self) -> set[str]:
        meta = self.prefix / "conda-meta"
        return {p.stem for p in meta.glob("*.json")} if meta.is_dir() else set()


def rattler_install_process(
    url: str, specs: list[str], tmp_path: Path, timeout: float = 120
) -> RattlerResult:
    work = Path(tmp_path) / f"rattler-{time.monotonic_ns()}"
    prefix, cache = work / "prefix", work / "cache"
    cache.mkdir(parents=True)
    env = cli_env({"RATTLER_CACHE_DIR": str(cache), "HOME": str(work)})
    proc = subprocess.run(
        [sys.executable, str(RATTLER_CLIENT), url, str(prefix), str(cache), *specs],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    records: list[dict[str, Any]] = []
    if proc.returncode == 0:
        records = json.loads(proc.stdout.strip().splitlines()[-1])
    return RattlerResult(proc.returncode, records, proc.stdout, proc.stderr, prefix)


@pytest.fixture
def rattler_install() -> Callable[..., RattlerResult]:
    """rattler_install(url, specs, tmp_path) -> RattlerResult (solve + install in a subprocess)."""
    return rattler_install_process


# --- common command lines ---------------------------------------------------------------------

ALL_SUBDIR_ARGS = ("-s", "linux-64", "-s", "osx-64", "-s", "noarch")


def mirror_args(url: str, target: Path, *extra: Any, subdirs: bool = True) -> tuple[str, ...]:
    """`mirror URL DIR -j 4 [-s linux-64 -s osx-64 -s noarch] EXTRA...`"""
    args: list[str] = ["mirror", str(url), str(target), "-j", "4"]
    if subdirs:
        args += ALL_SUBDIR_ARGS
    return (*args, *map(str, extra))


def real_files(channel: Channel) -> dict[str, set[str]]:
    """subdir -> every package filename the channel's index lists."""
    return {sub: set(channel.records(sub)) for sub in channel.docs}


def disk_packages(root: Path, subdir: str) -> set[str]:
    folder = root / subdir
    if not folder.is_dir():
        return set()
    return {
        p.name
        for p in folder.iterdir()
        if p.is_file()
        and not p.name.startswith(".")
        and (p.name.endswith(".conda") or p.name.endswith(".tar.bz2"))
    }


def ok(result: CliResult, code: int = 0) -> CliResult:
    """Assert the exit code, showing the whole output (pytest truncates object reprs)."""
    assert result.returncode == code, str(result)
    return result
