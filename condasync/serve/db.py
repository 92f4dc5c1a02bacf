"""The server's state in SQL (SQLite by default, PostgreSQL for several replicas, any SQLAlchemy
URL): the connection, channels, API keys and roles. Every function opens and closes its own
short transaction; the tables are in rows.py, the sync tasks' queries in taskdb.py."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, inspect, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from condasync.serve.roles import Identity, hash_key, new_key, same_hash
from condasync.serve.rows import ACTIVE, ApiKeyRow, Base, ChannelRoleRow, ChannelRow, TaskRow
from condasync.serve.rows import utcnow as utcnow
from condasync.serve.taskdb import STALE_AFTER as STALE_AFTER
from condasync.serve.taskdb import Task as Task
from condasync.serve.taskdb import TaskQueries
from condasync.serve.taskdb import replica_id as replica_id

STATE_DIR = ".condasync"
DB_NAME = "condasync.db"


@dataclass(frozen=True)
class Channel:
    name: str
    private: bool
    mirror_channel_url: str | None
    mirror_mode: str | None  # "proxy", "mirror", or None for a plain tree without a row
    ttl: int = 600
    # mirror options kept with the channel (max_delete, ...); compared, never hashed
    settings: dict[str, Any] = field(default_factory=dict, hash=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "private": self.private,
            "mirror_channel_url": self.mirror_channel_url,
            "mirror_mode": self.mirror_mode,
            "ttl": self.ttl,
            **self.settings,
        }


@dataclass(frozen=True)
class KeyInfo:
    id: int
    hint: str
    role: str | None
    channels: dict[str, str]
    description: str
    created_at: datetime
    revoked: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "hint": self.hint,
            "role": self.role,
            "channels": self.channels,
            "description": self.description,
            "created_at": self.created_at.isoformat(),
            "revoked": self.revoked,
        }


class ChannelExists(Exception):
    pass


def default_url(root: Path) -> str:
    return f"sqlite:///{root / STATE_DIR / DB_NAME}"


def engine_url(url: str) -> str:
    """`postgresql://` and `postgres://` mean the psycopg 3 driver (SQLAlchemy would pick
    psycopg2, which we do not ship); an explicit `+driver` is kept."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    return url


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


class Database(TaskQueries):
    """A thin store over SQLAlchemy; returns frozen dataclasses, never live ORM objects."""

    def __init__(self, url: str) -> None:
        self.url = url
        url = engine_url(url)
        if url.startswith("sqlite:///"):
            path = url[len("sqlite:///") :]
            if path and path != ":memory:":
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self.engine: Engine = create_engine(
                url, connect_args={"check_same_thread": False, "timeout": 10}
            )
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_engine(url, pool_pre_ping=True)
        Base.metadata.create_all(self.engine)
        self._migrate()
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock = threading.Lock()

    def _migrate(self) -> None:
        """Databases made by an earlier version lack the task ownership columns and index."""
        columns = {c["name"] for c in inspect(self.engine).get_columns("tasks")}
        channel_columns = {c["name"] for c in inspect(self.engine).get_columns("channels")}
        with self.engine.begin() as conn:
            if "settings" not in channel_columns:
                conn.execute(text("ALTER TABLE channels ADD COLUMN settings TEXT"))
            if "owner" not in columns:
                conn.execute(text("ALTER TABLE tasks ADD COLUMN owner VARCHAR(128)"))
                # No replica of this version runs them: end them before the unique index.
                conn.execute(
                    update(TaskRow)
                    .where(TaskRow.status.in_(ACTIVE))
                    .values(
                        status="failed",
                        error="interrupted: the server stopped",
                        finished_at=utcnow(),
                    )
                )
            if "heartbeat_at" not in columns:
                kind = (
                    "TIMESTAMP WITH TIME ZONE" if self.engine.name == "postgresql" else "DATETIME"
                )
                conn.execute(text(f"ALTER TABLE tasks ADD COLUMN heartbeat_at {kind}"))
        for index in Base.metadata.tables["tasks"].indexes:
            index.create(self.engine, checkfirst=True)

    def session(self) -> Session:
        return self._sessions()

    def close(self) -> None:
        self.engine.dispose()

    # channels --------------------------------------------------------------------------------

    @staticmethod
    def _channel(row: ChannelRow) -> Channel:
        settings = json.loads(row.settings) if row.settings else {}
        return Channel(
            row.name, row.private, row.mirror_channel_url, row.mirror_mode, row.ttl, settings
        )

    def channels(self) -> list[Channel]:
        with self.session() as s:
            return [self._channel(r) for r in s.scalars(select(ChannelRow).order_by("name"))]

    def channel(self, name: str) -> Channel | None:
        with self.session() as s:
            row = s.scalar(select(ChannelRow).where(ChannelRow.name == name))
            return self._channel(row) if row else None

    def create_channel(self, channel: Channel, owner_key_id: int | None = None) -> Channel:
        with self._write_lock, self.session() as s:
            s.add(
                ChannelRow(
                    name=channel.name,
                    private=channel.private,
                    mirror_channel_url=channel.mirror_channel_url,
                    mirror_mode=channel.mirror_mode,
                    ttl=channel.ttl,
                    settings=json.dumps(channel.settings) if channel.settings else None,
                )
            )
            if owner_key_id is not None:
                s.add(ChannelRoleRow(key_id=owner_key_id, channel=channel.name, role="owner"))
            try:
                s.commit()
            except IntegrityError:
                raise ChannelExists(channel.name) from None
        return channel

    def upsert_channel(self, channel: Channel) -> None:
        with self._write_lock, self.session() as s:
            row = s.scalar(select(ChannelRow).where(ChannelRow.name == channel.name))
            if row is None:
                row = ChannelRow(name=channel.name)
                s.add(row)
            row.private = channel.private
            row.mirror_channel_url = channel.mirror_channel_url
            row.mirror_mode = channel.mirror_mode
            row.ttl = channel.ttl
            row.settings = json.dumps(channel.settings) if channel.settings else None
            s.commit()

    def delete_channel(self, name: str) -> bool:
        with self._write_lock, self.session() as s:
            row = s.scalar(select(ChannelRow).where(ChannelRow.name == name))
            for role in s.scalars(select(ChannelRoleRow).where(ChannelRoleRow.channel == name)):
                s.delete(role)
            if row is not None:
                s.delete(row)
            s.commit()
            return row is not None

    # keys ------------------------------------------------------------------------------------

    def has_owner(self) -> bool:
        """Whether any unrevoked key holds the server owner role."""
        with self.session() as s:
            query = select(ApiKeyRow.id).where(
                ApiKeyRow.revoked.is_(False), ApiKeyRow.role == "owner"
            )
            return s.scalar(query.limit(1)) is not None

    def create_key(
        self,
        role: str | None,
        channel: str | None = None,
        channel_role: str | None = None,
        description: str = "",
    ) -> tuple[str, int]:
        """A new key (returned once, stored only as its hash) and its id."""
        key = new_key()
        with self._write_lock, self.session() as s:
            row = ApiKeyRow(
                key_hash=hash_key(key), hint=key[:12], role=role, description=description
            )
            s.add(row)
            s.flush()
            if channel is not None:
                s.add(ChannelRoleRow(key_id=row.id, channel=channel, role=channel_role or "member"))
            s.commit()
            return key, row.id

    def keys(self) -> list[KeyInfo]:
        with self.session() as s:
            roles: dict[int, dict[str, str]] = {}
            for r in s.scalars(select(ChannelRoleRow)):
                roles.setdefault(r.key_id, {})[r.channel] = r.role
            return [
                KeyInfo(
                    k.id,
                    k.hint,
                    k.role,
                    roles.get(k.id, {}),
                    k.description,
                    k.created_at,
                    k.revoked,
                )
                for k in s.scalars(select(ApiKeyRow).order_by(ApiKeyRow.id))
            ]

    def revoke_key(self, ident: str) -> int:
        """Revoke by id or by the key's first characters; returns how many keys were revoked."""
        with self._write_lock, self.session() as s:
            if ident.isdigit():
                rows = list(s.scalars(select(ApiKeyRow).where(ApiKeyRow.id == int(ident))))
            else:
                rows = [
                    r
                    for r in s.scalars(select(ApiKeyRow))
                    if ident
                    and (r.hint.startswith(ident) or same_hash(r.key_hash, hash_key(ident)))
                ]
                if len(rows) > 1:
                    return -len(rows)  # ambiguous: revoke nothing
            for row in rows:
                row.revoked = True
            s.commit()
            return len(rows)

    def identify(self, key: str) -> Identity | None:
        """The identity of a valid key, None for an unknown or revoked one."""
        digest = hash_key(key)
        with self.session() as s:
            row = s.scalar(select(ApiKeyRow).where(ApiKeyRow.key_hash == digest))
            if row is None or row.revoked or not same_hash(row.key_hash, digest):
                return None
            roles = {
                r.channel: r.role
                for r in s.scalars(select(ChannelRoleRow).where(ChannelRoleRow.key_id == row.id))
            }
            return Identity(row.id, row.role, roles)
