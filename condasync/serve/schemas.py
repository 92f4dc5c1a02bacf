"""The API's request and response shapes (pydantic), and the error answers each declares."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from condasync.serve.closure_settings import ClosureSettings
from condasync.serve.paths import CHANNEL_NAME_RE


class Error(BaseModel):
    detail: str


class ChannelMetadata(BaseModel):
    """quetz's channel metadata: mirror filters (package names or MatchSpecs) and the names a
    mirror channel proxies instead of copying."""

    model_config = ConfigDict(extra="forbid")

    includelist: list[str] | None = None
    excludelist: list[str] | None = None
    proxylist: list[str] | None = None


ACTIONS = ("synchronize", "synchronize_repodata")


def check_action(value: str) -> str:
    if value not in ACTIONS:
        raise ValueError(
            f"action {value!r} has no meaning here; accepted: {', '.join(ACTIONS)}"
            " (synchronize_repodata fetches indexes and packages, as synchronize does)"
        )
    return value


class ChannelIn(ClosureSettings):  # a mirror channel's lock/solve/platforms/with_deps
    model_config = ConfigDict(extra="ignore")

    name: str = Field(pattern=CHANNEL_NAME_RE.pattern, examples=["proxy-channel"])
    private: bool = False
    mirror_channel_url: str = Field(examples=["https://conda.anaconda.org/btel"])
    mirror_mode: Literal["proxy", "mirror"]
    ttl: int = Field(600, ge=0, le=10 * 365 * 86400, description="Proxy index TTL in seconds.")
    max_delete: float = Field(
        50,
        ge=0,
        le=100,
        description="Mirror channels: a synchronize that would delete more than this percent"
        " of a subdir's packages fails and changes nothing (100 allows any shrink).",
    )

    description: str | None = Field(None, max_length=300)
    size_limit: int | None = Field(None, ge=0, description="Kept for quetz clients; not enforced")
    metadata: ChannelMetadata = Field(default_factory=ChannelMetadata)
    actions: list[str] | None = Field(
        None,
        description="Mirror channels: the first synchronize starts at creation unless this is"
        " [] (synchronize or synchronize_repodata).",
    )
    start_at: datetime | None = Field(None, description="When the first synchronize starts")
    repeat_every_seconds: int | None = Field(None, ge=1)

    @field_validator("actions")
    @classmethod
    def _actions(cls, value: list[str] | None) -> list[str] | None:
        return value if value is None else [check_action(a) for a in value]

    @field_validator("mirror_channel_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("mirror_channel_url must be an http:// or https:// URL")
        return value


class ChannelOut(BaseModel):
    name: str
    private: bool
    mirror_channel_url: str | None
    mirror_mode: Literal["proxy", "mirror"] | None = Field(
        description="null for a plain tree found in DIR without a database row"
    )
    ttl: int
    max_delete: float = 50
    description: str | None = None
    size_limit: int | None = None
    members_count: int = 0
    packages_count: int = 0
    metadata: ChannelMetadata = Field(default_factory=ChannelMetadata)
    # issue 14 closure settings: only mirror channels that set them have them
    lock: list[str] | None = None
    solve: list[str] | None = None
    platforms: list[str] | None = None
    with_deps: bool | None = None
    virtual_packages: list[str] | None = None
    keep_unselected: str | None = None


class ActionIn(BaseModel):
    action: str = Field(examples=list(ACTIONS), description=f"One of {', '.join(ACTIONS)}")
    start_at: datetime | None = None
    repeat_every_seconds: int | None = Field(None, ge=1)

    @field_validator("action")
    @classmethod
    def _known(cls, value: str) -> str:
        return check_action(value)


class TaskOut(BaseModel):
    id: int
    channel: str
    action: str
    status: Literal["pending", "running", "success", "failed"]
    created_at: str | None
    start_at: str | None
    started_at: str | None
    finished_at: str | None
    repeat_every_seconds: int | None
    report: dict[str, Any] | None = Field(description="The mirror report (condasync mirror --json)")
    error: str | None


class JobTaskOut(TaskOut):
    """A task, with quetz's job fields too (the id works with /api/tasks and /api/jobs)."""

    manifest: str
    created: str | None
    owner_id: str | None = None
    items_spec: str | None = None


class PackageOut(BaseModel):
    name: str
    latest_version: str
    current_version: str
    summary: str | None
    subdirs: list[str]
    platforms: list[str]
    description: str | None = None
    url: str | None = None
    latest_change: str | None = None


class Deleted(BaseModel):
    name: str
    deleted: bool


Responses = dict[int | str, dict[str, Any]]


def err(description: str) -> dict[str, Any]:
    return {"model": Error, "description": description}


R401: Responses = {401: err("No API key given (X-API-Key header)")}
R403: Responses = {403: err("Invalid or revoked key, or a key without the role this needs")}
R404: Responses = {404: err("No such channel")}
R405: Responses = {405: err("Not possible for this kind of channel")}
R409: Responses = {409: err("A channel with this name exists")}
FILE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The file (packages: immutable; indexes: short max-age, revalidate)",
        "content": {
            "application/octet-stream": {},
            "application/json": {},
            "application/zstd": {},
            "application/x-bzip2": {},
        },
    },
    206: {"description": "Partial content (Range)"},
    304: {"description": "Not modified (If-None-Match / If-Modified-Since)"},
    401: {"description": "Private channel and no API key"},
    403: {"description": "Private channel and a key without a role on it"},
    404: {"description": "No such channel or file (also any traversal attempt)"},
    416: {"description": "Range not satisfiable"},
    502: {"description": "Proxy channel: upstream failed or sent a corrupt file"},
    504: {"description": "Proxy channel: upstream timed out"},
}
