"""PURE: which request paths name a channel file, and how each kind of file is served.

A path is split from the raw (still percent-encoded) request target, one segment at a time, so
an encoded slash or backslash can never become a separator; anything odd is simply not a file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote

from condasync.channel.repodata import is_subdir

CHANNEL_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
# What a decoded segment may hold: every conda filename and index name fits, and nothing that
# could be a separator, a drive, a dot-file or a control character does.
SAFE_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_+!=~,@-][A-Za-z0-9._+!=~,@-]{0,254}$")
INDEX_NAMES = frozenset(
    {
        "repodata.json",
        "repodata.json.zst",
        "repodata.json.bz2",
        "current_repodata.json",
        "current_repodata.json.zst",
        "current_repodata.json.bz2",
        "repodata_shards.msgpack.zst",
    }
)
# `/channels/<name>/...` and quetz's `/get/<name>/...`: one parser, one handler for both.
FILE_PREFIXES = ("channels", "get")
CHANNEL_ROOT_FILES = frozenset({"channeldata.json"})
SHARD_FILE_RE = re.compile(r"^[0-9a-f]{64}\.msgpack\.zst$")
PACKAGE_CACHE = "public, max-age=31536000, immutable"
INDEX_CACHE = "public, max-age=30, must-revalidate"


@dataclass(frozen=True)
class FilePath:
    """A request for one channel file: `subdir` is "" for a file at the channel root."""

    channel: str
    subdir: str
    filename: str
    token: str | None = None  # a key given as /t/<key>/channels/...

    @property
    def relpath(self) -> str:
        return f"{self.subdir}/{self.filename}" if self.subdir else self.filename


def is_channel_name(name: str) -> bool:
    return bool(CHANNEL_NAME_RE.match(name))


def _segment(raw: str) -> str | None:
    """Decode one raw path segment; None when it is not a plain, safe file or folder name."""
    if "%" in raw:
        try:
            raw = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            return None
    return raw if SAFE_SEGMENT_RE.match(raw) else None


@lru_cache(maxsize=8192)
def parse_file_path(raw_path: str) -> FilePath | None:
    """`/channels/<name>/<subdir>/<file>` or `/channels/<name>/channeldata.json`, or the same
    under quetz's `/get/` (either optionally behind `/t/<key>`), from the raw request path;
    None for anything else, traversal included."""
    if "?" in raw_path or "#" in raw_path:
        return None
    parts = raw_path.split("/")
    if len(parts) < 2 or parts[0] != "":
        return None
    parts = parts[1:]
    token = None
    if parts[0] == "t" and len(parts) > 2:
        token = unquote(parts[1])
        if not token or any(c in token for c in "/\\\x00"):
            return None
        parts = parts[2:]
    if (
        len(parts) == 5
        and parts[0] in FILE_PREFIXES
        and parts[3] == "shards"
        and SHARD_FILE_RE.match(parts[4])
    ):
        parts = [*parts[:3], f"shards/{parts[4]}"]  # a CEP-16 shard: a plain hex name only
    elif len(parts) not in (3, 4) or parts[0] not in FILE_PREFIXES:
        return None
    segments = [p if p.startswith("shards/") else _segment(p) for p in parts[1:]]
    if any(s is None for s in segments):
        return None
    names = [s for s in segments if s is not None]
    channel = names[0]
    if not is_channel_name(channel):
        return None
    if len(names) == 2:
        if names[1] not in CHANNEL_ROOT_FILES:
            return None
        return FilePath(channel, "", names[1], token)
    subdir, filename = names[1], names[2]
    if not is_subdir(subdir):
        return None
    return FilePath(channel, subdir, filename, token)


def is_package(filename: str) -> bool:
    return filename.endswith((".conda", ".tar.bz2"))


def is_shard(filename: str) -> bool:
    """`shards/<sha256 hex>.msgpack.zst`: named by its hash, so immutable like a package."""
    return filename.startswith("shards/") and bool(SHARD_FILE_RE.match(filename[7:]))


def is_index(filename: str) -> bool:
    return filename in INDEX_NAMES or filename in CHANNEL_ROOT_FILES


@lru_cache(maxsize=1024)
def content_type(filename: str) -> str:
    if is_package(filename):
        return "application/octet-stream"
    if filename.endswith(".json"):
        return "application/json"
    if filename.endswith(".zst"):
        return "application/zstd"
    if filename.endswith(".bz2"):
        return "application/x-bzip2"
    return "application/octet-stream"


@lru_cache(maxsize=1024)
def cache_control(filename: str, private: bool) -> str:
    policy = PACKAGE_CACHE if is_package(filename) or is_shard(filename) else INDEX_CACHE
    return policy.replace("public", "private", 1) if private else policy
