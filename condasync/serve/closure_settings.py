"""A mirror channel's closure settings (issue 14): `lock`, `solve`, `platforms`, `with_deps`
(and `virtual_packages`, `keep_unselected`) as set with POST /api/channels and
PATCH /api/channels/{name}, and the mirror job's `Closure` built from them."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from condasync.engine.closure_options import check_closure
from condasync.engine.job import Closure
from condasync.errors import CondasyncError

KEYS = ("lock", "solve", "platforms", "with_deps", "virtual_packages", "keep_unselected")


class ClosureSettings(BaseModel):
    """The closure fields of a channel body; each is optional, and null clears it."""

    model_config = ConfigDict(extra="ignore")

    lock: list[str] | None = Field(
        None,
        description="Lockfiles to mirror: each the text of a pixi.lock, conda-lock.yml or"
        " @EXPLICIT file, or a path on the server.",
    )
    solve: list[str] | None = Field(None, description="MatchSpecs forming one environment.")
    platforms: list[str] | None = Field(None, description="Platforms to solve for.")
    with_deps: bool | None = Field(None, description="Also mirror what the selection needs.")
    virtual_packages: list[str] | None = Field(None, examples=[["__glibc=2.17"]])
    keep_unselected: str | None = Field(None, examples=["30d"])

    @field_validator("lock", "solve", "platforms", "virtual_packages", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


def closure_settings(body: BaseModel, only_set: bool = False) -> dict[str, Any]:
    """The closure keys a body gives (all of them, or only those sent, for PATCH)."""
    fields = body.model_fields_set if only_set else set(KEYS)
    values = {key: getattr(body, key, None) for key in KEYS if key in fields}
    return values if only_set else {k: v for k, v in values.items() if v is not None}


def check_settings(settings: dict[str, Any]) -> str | None:
    """Why these settings cannot run (bad spec, virtual package or duration), or None."""
    try:
        check_closure(_closure(settings, lambda text: text if "\n" not in text else ""))
    except CondasyncError as exc:
        return str(exc)
    return None


def _closure(settings: dict[str, Any], lock_path: Any) -> Closure:
    locks = [lock_path(text) for text in settings.get("lock") or []]
    return Closure(
        locks=tuple(p for p in locks if p),
        solve=tuple(settings.get("solve") or ()),
        platforms=tuple(settings.get("platforms") or ()),
        virtual_packages=tuple(settings.get("virtual_packages") or ()),
        with_deps=bool(settings.get("with_deps")),
        keep_unselected=str(settings.get("keep_unselected") or "30d"),
    )


def job_closure(settings: dict[str, Any], workdir: Path) -> Closure:
    """The job's Closure. A lock given as text is written to `workdir` (same text, same
    file name, so an unchanged lock keeps the run a no-op)."""

    def lock_path(text: str) -> str:
        if "\n" not in text:
            return text  # a path on the server
        path = workdir / f"lock-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
        path.write_text(text)
        return str(path)

    return _closure(settings, lock_path)
