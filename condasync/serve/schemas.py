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
    # issue 14 closure settings: only mirror channels that set them have them
    lock: list[str] | None = None
    solve: list[str] | None = None
    platforms: list[str] | None = None
    with_deps: bool | None = None
    virtual_packages: list[str] | None = None
    keep_unselected: str | None = None


class ActionIn(BaseModel):
    action: Literal["synchronize"]
    start_at: datetime | None = None
    repeat_every_seconds: int | None = Field(None, ge=1)


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


class PackageOut(BaseModel):
    name: str
    latest_version: str
    current_version: str
    summary: str | None
    subdirs: list[str]
    platforms: list[str]


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
